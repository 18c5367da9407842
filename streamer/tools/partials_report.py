"""The tables of ``streamer bench --partials``: the targets, then both runs' counts (Markdown)."""

from __future__ import annotations

from typing import Any

#: Utterances with at most this much speech count as commands for the eager figures.
COMMAND_MAX_MS = 1500.0
#: Utterances with this much speech (ms, both ends included) are the issue's "1 s commands".
ONE_SECOND_MS = (750.0, 1250.0)


def targets(r: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    """The target rows: (measure, target, measured, met)."""
    f, emit, first = r["finals"], r["emit_ms"], r["first_appearance_ms"]
    unmatched = bool(f["only_off"] + f["only_on"])
    extra = f" ({f['only_off']} only off, {f['only_on']} only on)" * unmatched
    same = f"{f['identical']} / {f['matched']} identical{extra}"
    same_ok = not extra and f["identical"] == f["matched"]
    bad = r["stable_contradicted"] / r["stable_words"] if r["stable_words"] else None
    bad_v = f"{_pct(bad)} ({r['stable_contradicted']} / {r['stable_words']}; "
    first_stable = r.get("final_words_stable_first", 0)
    bad_v += f"{first_stable} / {r['final_words']} final words were stable first)"
    first_m = "a word's first appearance in a partial after it was spoken, p50"
    first_v = f"{_fmt(first['p50'])} ms (p95 {_fmt(first['p95'])}; "
    first_v += f"{r['final_words_seen_in_partial']} / {r['final_words']} final words seen)"
    commands = f"commands (≤ {COMMAND_MAX_MS / 1000:g} s of speech), p50"
    lead = r["eager_lead_over_today_ms_commands"]["p50"]
    lead_m = f"eager before today's final (partials and eager off), {commands}"
    lead_v = f"{_fmt(lead)} ms ({r['eager_lead_over_today_commands']} utterances; all lengths "
    lead_v += f"{_fmt(r['eager_lead_over_today_ms']['p50'])} ms)"
    low, high = ONE_SECOND_MS
    one_m = f"eager before today's final, 1 s commands ({low / 1000:g}-{high / 1000:g} s), p50"
    one_v = f"{_fmt(r['eager_lead_over_today_ms_one_second']['p50'])} ms "
    one_v += f"({r['eager_lead_over_today_one_second']} utterances)"
    eager, eager_all = r["eager_advance_ms_commands"]["p50"], r["eager_advance_ms"]["p50"]
    eager_m = f"eager before its own final (same run), {commands}"
    eager_v = f"{_fmt(eager)} ms ({r['eager_confirmed_commands']} confirmed; all lengths "
    eager_v += f"{_fmt(eager_all)} ms, {r['eager_confirmed']})"
    on95, off95 = emit["on"]["p95"], emit["off"]["p95"]
    ratio = on95 / off95 if on95 is not None and off95 else None
    emit_m = f"{r['runs']['on']['streams']} streams: finals' p95 end_of_speech_to_emit, on / off"
    emit_v = f"{_fmt(ratio, 2)}x ({_fmt(on95)} / {_fmt(off95)} ms)"
    share, share_max = r["engine_share"], r["engine_share_max"]
    return [
        ("finals, partials+eager on vs off", "identical", same, same_ok),
        ("stable words later contradicted by the final", "≤ 2%", bad_v, _le(bad, 0.02)),
        (first_m, "≤ 700 ms", first_v, _le(first["p50"], 700.0)),
        (lead_m, "≥ 200 ms", lead_v, _le(200.0, lead)),
        (one_m, "(informative)", one_v, r["eager_lead_over_today_one_second"] > 0),
        (eager_m, "(informative)", eager_v, eager is not None),
        (emit_m, "≤ 1.05x", emit_v, _le(ratio, 1.05)),
        ("engine time on partials", f"≤ {share_max:.0%}", _pct(share), _le(share, share_max)),
    ]


def format_table(r: dict[str, Any]) -> str:
    """The targets table, then the counts of both runs, as Markdown."""
    lines = ["| measure | target | measured | met |", "| --- | --- | --- | --- |"]
    lines += [f"| {m} | {t} | {v} | {'yes' if ok else 'no'} |" for m, t, v, ok in targets(r)]
    lines += ["", _COUNTS_HEAD, "|" + " --- |" * 10]
    for arm, run in r["runs"].items():
        c, lat, e = r["counts"][arm], run["latency_ms"], r["emit_ms"][arm]
        engine = run.get("daemon_batches") or {}
        lines.append(
            f"| {arm} | {run['audio_s']:.0f} | {c['partial']} | {c['eager']} | {c['resumed']} "
            f"| {c['utterance']} ({run['errors']}) | {_fmt(lat['p50'])} / {_fmt(lat['p95'])} "
            f"| {_fmt(e['p50'])} / {_fmt(e['p95'])} | {_fmt(engine.get('busy_s'), 1)} "
            f"| {_fmt(engine.get('partials_busy_s'), 1)} |"
        )
    return "\n".join(lines)


_COUNTS_HEAD = (
    "| partials+eager | audio s | partials | eager | resumed | finals (errors) "
    "| latency p50 / p95 ms | emit p50 / p95 ms | engine busy s | partials s |"
)


def _le(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and a <= b


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _fmt(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"
