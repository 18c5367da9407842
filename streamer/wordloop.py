"""CTC decoding constrained to a word loop: any sequence of words from a short list.

When the intent model says an utterance is, say, a digit string, its transcript can only be
digit words. A free search (greedy, or beam search with the command LM) may still spell
"nine" as "one" or "five" wherever the acoustic evidence is weak; searching only the words the
intent allows removes every spelling that is no word of the list.

The search is Viterbi over the CTC topology of the loop ``word (| word)*``: each word is its
characters, with optional blanks between them (required between a repeated character), and
consecutive words are joined by the word delimiter. The best path is returned as per-frame
token ids, which read back like a greedy path
(:meth:`streamer.ctc.CtcGreedyDecoder.read_path`), so words, times and confidences mean
exactly what they mean for the free search.

Pure numpy; no I/O.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np
import numpy.typing as npt

from streamer.errors import ModelError


def unspellable(word: str, tokens: Collection[str]) -> list[str]:
    """The characters of ``word`` that are no token of ``tokens``, sorted; empty if it spells."""
    return sorted({ch for ch in word if ch not in tokens})


class WordLoop:
    """The Viterbi search for one word list over one CTC vocabulary.

    ``word_penalty`` is subtracted from the log score each time a word starts: above zero it
    prefers fewer words.
    """

    def __init__(
        self,
        words: Sequence[str],
        vocab: Sequence[str],
        *,
        blank_id: int,
        delimiter: str,
        word_penalty: float = 0.0,
    ) -> None:
        """Build the search graph.

        Raises:
            ModelError: no words, an empty word, or a character that is not a vocab token.
        """
        index = {token: i for i, token in enumerate(vocab)}
        if not words:
            raise ModelError("a word loop needs at least one word")
        if delimiter not in index:
            raise ModelError(f"the word delimiter {delimiter!r} is not in the vocab")
        self.words = tuple(words)
        self.word_penalty = word_penalty
        tokens: list[int] = [blank_id]  # node 0: blank before the first word
        preds: list[list[int]] = [[0]]
        firsts: list[int] = []
        lasts: list[int] = []
        spelled: list[tuple[list[int], list[int], list[int]]] = []
        for word in self.words:
            missing = unspellable(word, index)
            if not word or missing:
                raise ModelError(f"word {word!r} cannot be spelled with the vocab {missing}")
            ids = [index[ch] for ch in word]
            chars = [len(tokens) + 2 * i for i in range(len(ids))]
            blanks = [c + 1 for c in chars]
            for t in ids:
                tokens += [t, blank_id]
                preds += [[], []]
            spelled.append((ids, chars, blanks))
            firsts.append(chars[0])
            lasts += [chars[-1], blanks[-1]]
        delim = len(tokens)
        delim_blank = delim + 1
        tokens += [index[delimiter], blank_id]
        preds += [[delim, *lasts], [delim_blank, delim]]
        for ids, chars, blanks in spelled:
            for i, node in enumerate(chars):
                if i == 0:
                    preds[node] = [node, 0, delim, delim_blank]
                else:
                    preds[node] = [node, blanks[i - 1]]
                    if ids[i] != ids[i - 1]:
                        preds[node].append(chars[i - 1])
                preds[node + 1] = [node + 1, node]
        width = max(len(p) for p in preds)
        n = len(tokens)
        self._tokens = np.array(tokens, dtype=np.int64)
        self._preds = np.zeros((n, width), dtype=np.int64)
        self._weights = np.full((n, width), -np.inf)
        for node, ps in enumerate(preds):
            self._preds[node, : len(ps)] = ps
            starts_word = node in firsts
            self._weights[node, : len(ps)] = [
                -word_penalty if starts_word and p != node else 0.0 for p in ps
            ]
        self._starts = np.array([0, *firsts], dtype=np.int64)
        self._start_weights = np.array([0.0] + [-word_penalty] * len(firsts))
        self._finals = np.array(lasts, dtype=np.int64)

    def best_path(self, log_probs: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
        """Token id per frame of the best path through the loop (``log_probs`` [frames, vocab]).

        An utterance too short to spell any word yields all blanks.
        """
        n_frames = len(log_probs)
        tokens = self._tokens
        score = np.full(len(tokens), -np.inf)
        if not n_frames:
            return np.zeros(0, dtype=np.int64)
        score[self._starts] = log_probs[0, tokens[self._starts]] + self._start_weights
        back = np.zeros((n_frames, len(tokens)), dtype=np.int64)
        rows = np.arange(len(tokens))
        for t in range(1, n_frames):
            cand = score[self._preds] + self._weights
            k = cand.argmax(axis=1)
            back[t] = self._preds[rows, k]
            score = cand[rows, k] + log_probs[t, tokens]
        finals = score[self._finals]
        if not np.isfinite(finals).any():
            return np.full(n_frames, tokens[0], dtype=np.int64)
        node = int(self._finals[int(finals.argmax())])
        path = np.empty(n_frames, dtype=np.int64)
        for t in range(n_frames - 1, -1, -1):
            path[t] = node
            node = int(back[t, node])
        out: npt.NDArray[np.int64] = tokens[path]
        return out


def word_list_gap(
    log_probs: npt.NDArray[np.float64], path: npt.NDArray[np.int64], *, blank: int | None
) -> float:
    """How far ``path`` scores below the free best path, in nats per emitting frame.

    A frame emits when either path has a non-blank token there (leading and trailing silence,
    blank on both, does not dilute the gap); as in :mod:`streamer.contexts`.
    """
    if not len(path):
        return 0.0
    free = log_probs.argmax(axis=1)
    rows = np.arange(len(path))
    gap = float(log_probs[rows, free].sum() - log_probs[rows, path].sum())
    silent = blank if blank is not None else -1
    emitting = max(1, int(np.count_nonzero((path != silent) | (free != silent))))
    return max(0.0, gap) / emitting
