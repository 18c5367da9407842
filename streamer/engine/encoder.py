"""The ONNX engine: one shared onnxruntime session per bundle, and the execution-provider choice.

Provider choice: onnxruntime-gpu lists ``CUDAExecutionProvider`` as available even on machines
without the CUDA libraries; asking for it there logs an error and silently runs on the CPU. So the
choice is made in two steps: :func:`probe_cuda` loads the CUDA provider library the way
onnxruntime would (reporting the missing library, if any) before CUDA is requested at all, and
:func:`confirm_provider` reads what the created session really uses (``session.get_providers()``).
The outcome and the reason are logged once and reported in the server's info.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from streamer.config import EngineConfig
from streamer.engine.bundles import load_manifest
from streamer.errors import ManifestError, ModelError, PreemptedError
from streamer.manifest import MODEL_NAME, Manifest

log = logging.getLogger(__name__)

CUDA: Final = "CUDAExecutionProvider"
CPU: Final = "CPUExecutionProvider"

Outputs = dict[str, npt.NDArray[Any]]


@dataclass(frozen=True)
class ProviderChoice:
    """The execution provider a session really runs on, and why."""

    provider: str
    reason: str


def probe_cuda() -> str | None:
    """Try to load onnxruntime's CUDA provider library; return None if it loads, else why not."""
    capi = Path(ort.__file__).parent / "capi"
    shared, cuda = (
        capi / "libonnxruntime_providers_shared.so",
        capi / "libonnxruntime_providers_cuda.so",
    )
    if not cuda.exists():
        return "this onnxruntime build has no CUDA provider library"
    try:
        ctypes.CDLL(str(shared), mode=ctypes.RTLD_GLOBAL)
        ctypes.CDLL(str(cuda))
    except OSError as exc:
        return f"CUDA provider cannot load: {exc}"
    return None


def request_providers(
    available: Sequence[str], *, wanted: str, cuda_probe: Callable[[], str | None]
) -> tuple[list[str], str]:
    """Decide which providers to ask a new session for.

    Args:
        available: ``onnxruntime.get_available_providers()``.
        wanted: ``"auto"`` (CUDA when it can really load, else CPU), ``"cuda"`` or ``"cpu"``.
        cuda_probe: returns None when the CUDA provider can load, else the reason it cannot.

    Returns:
        The provider list to request, and the reason for it (used if the session confirms it).
    """
    if wanted == "cpu":
        return [CPU], "CPU requested by configuration"
    if CUDA not in available:
        return [CPU], "this onnxruntime build offers no CUDA provider"
    problem = cuda_probe()
    if problem is not None:
        return [CPU], problem
    return [CUDA, CPU], "CUDA provider loaded"


def confirm_provider(
    requested: Sequence[str], actual: Sequence[str], reason: str
) -> ProviderChoice:
    """Turn the requested and the session's actual providers into the final choice."""
    if CUDA in requested and CUDA not in actual:
        return ProviderChoice(CPU, "CUDA provider failed to initialise (no usable GPU?)")
    return ProviderChoice(actual[0] if actual else CPU, reason)


def session_options(config: EngineConfig) -> ort.SessionOptions:
    """Build session options with deliberate thread settings.

    Why: one inference thread pool runs one ``Run`` at a time per worker, and ORT's intra-op
    pool does the parallel work inside it. Spinning intra-op threads busy-wait between ops;
    on a small machine they fight the event loop and each other (measured: about 2x slower on
    2 cores under load), so spinning is off and the pool size defaults to the core count.
    """
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = config.intra_op_threads or (os.cpu_count() or 1)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return opts


def open_session(model_path: Path, config: EngineConfig) -> tuple[Any, ProviderChoice]:
    """Open ``model_path`` on the provider ``config`` asks for; return it and what it runs on.

    Raises:
        ModelError: onnxruntime cannot load the graph (the message names the file).
    """
    requested, reason = request_providers(
        ort.get_available_providers(), wanted=config.provider, cuda_probe=probe_cuda
    )
    try:
        session = ort.InferenceSession(
            str(model_path), sess_options=session_options(config), providers=requested
        )
    except Exception as exc:  # ORT raises its own untyped errors for corrupt graphs
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"cannot load {model_path}: {first}") from None
    return session, confirm_provider(requested, session.get_providers(), reason)


class Encoder:
    """One loaded bundle: its manifest and the onnxruntime session all streams share.

    ``run`` may be called from several threads at once (ORT sessions are safe for concurrent
    ``Run`` calls).
    """

    def __init__(
        self,
        name: str,
        manifest: Manifest,
        session: Any,
        choice: ProviderChoice,
        *,
        bundle_dir: Path | None = None,
    ) -> None:
        self.name = name
        self.manifest = manifest
        self.bundle_dir = bundle_dir
        self.session = session
        self.provider = choice
        self._output_names = [o.name for o in manifest.outputs]

    @classmethod
    def load(cls, name: str, bundle_dir: Path, *, config: EngineConfig) -> Encoder:
        """Load ``bundle_dir`` (manifest.json + model.onnx); check the graph against the manifest.

        Raises:
            ModelError: the folder, manifest or graph is missing, corrupt or inconsistent.
        """
        if not bundle_dir.is_dir():
            raise ModelError(f"model {name!r}: bundle folder {bundle_dir} does not exist")
        try:
            manifest = load_manifest(bundle_dir)
        except ManifestError as exc:
            raise ModelError(f"model {name!r}: {exc}") from None
        model_path = bundle_dir / MODEL_NAME
        if not model_path.is_file():
            raise ModelError(f"model {name!r}: {model_path} is missing")
        try:
            session, choice = open_session(model_path, config)
        except ModelError as exc:
            raise ModelError(f"model {name!r}: {exc}") from None
        _check_graph(name, manifest, session)
        log.info(
            "model %s (%s/%s) runs on %s: %s",
            name,
            manifest.arch,
            manifest.task,
            choice.provider,
            choice.reason,
        )
        return cls(name, manifest, session, choice, bundle_dir=bundle_dir)

    def run(self, audio: npt.NDArray[np.float32]) -> Outputs:
        """Run one utterance (float32 mono at the manifest rate); return outputs by name.

        Raises:
            ModelError: the input does not fit the manifest, or onnxruntime failed.
        """
        self.check_input(audio)
        return self.run_batch(audio[np.newaxis, :])

    def check_input(self, audio: npt.NDArray[np.float32]) -> None:
        """Check one utterance against the manifest without running it.

        Raises:
            ModelError: not 1-D float32, shorter than the model's minimum, or not finite.
        """
        if audio.ndim != 1 or audio.dtype != np.float32:
            raise ModelError(
                f"model {self.name!r}: input must be 1-D float32, got "
                f"{audio.dtype}{list(audio.shape)}"
            )
        if audio.shape[0] < self.manifest.min_samples:
            raise ModelError(
                f"model {self.name!r}: {audio.shape[0]} samples is shorter than "
                f"the model's minimum of {self.manifest.min_samples}"
            )
        if not np.isfinite(audio).all():
            raise ModelError(f"model {self.name!r}: input contains NaN or infinity")

    def run_batch(self, batch: npt.NDArray[np.float32], options: Any = None) -> Outputs:
        """Run a [batch, samples] array as is; return outputs by name.

        ``options``: an ``onnxruntime.RunOptions`` (see :func:`stoppable`) to stop the run from
        another thread; a run stopped that way raises :class:`PreemptedError`.
        """
        try:
            values = self.session.run(self._output_names, {"input_values": batch}, options)
        except Exception as exc:  # ORT errors carry no stable type; one line is enough
            if options is not None and options.terminate:
                raise PreemptedError(f"model {self.name!r}: run stopped for an utterance") from None
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"model {self.name!r}: inference failed: {first}") from None
        return dict(zip(self._output_names, values, strict=True))


def stoppable() -> Any:
    """Run options whose ``terminate = True`` stops a run between two graph nodes.

    Measured on the shipped ctc bundle (bench/partial_cancel.py): a run of a 4 s window takes
    27 ms and returns within 1.5-3 ms of the request.
    """
    return ort.RunOptions()


def _check_graph(name: str, manifest: Manifest, session: Any) -> None:
    graph_inputs = [i.name for i in session.get_inputs()]
    graph_outputs = [o.name for o in session.get_outputs()]
    if graph_inputs[:1] != ["input_values"]:
        raise ModelError(
            f"model {name!r}: graph input is {graph_inputs}, manifest says input_values"
        )
    missing = [o.name for o in manifest.outputs if o.name not in graph_outputs]
    if missing:
        raise ModelError(f"model {name!r}: graph lacks the manifest's outputs {missing}")
