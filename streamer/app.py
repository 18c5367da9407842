"""Wiring and lifecycle: load bundles, start the server (and microphone), shut down in order.

Shutdown follows one order on SIGINT and SIGTERM: stop accepting connections, finish the
in-flight utterances of every stream, deliver their results, close every connection with 1001,
exit 0; bounded by ``server.shutdown_timeout_s``.

The microphone (``--mic``) is stream ``mic``, admitted by the stream registry like any client's
stream. The daemon claims the name before it accepts any connection, so a client asking for
``mic`` meanwhile is refused with ``stream_in_use``; once the device fails the name is free
again. A microphone asked to start while a client's stream holds the name is not started: it
logs one clear error and the daemon serves on, as for a failing device. Files
(``streamer transcribe``) and the microphone run through one loop,
:func:`streamer.streams.feed.run_source`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, TextIO, cast

from streamer import protocol as proto
from streamer.config import Config
from streamer.ctc import CtcKind
from streamer.decoding import OutputDecoder
from streamer.engine.encoder import Encoder
from streamer.engine.runner import Runner
from streamer.errors import ModelError, ProtocolError, StreamerError
from streamer.pubsub import Hub
from streamer.serve.bus import BusHub
from streamer.serve.client_errors import ClientErrorLog
from streamer.serve.journal import Journal
from streamer.serve.routes import routes as http_routes
from streamer.serve.security import exposure_warning
from streamer.serve.websocket import StreamerServer
from streamer.streams.feed import file_stream_name, run_file, run_source
from streamer.streams.intents_setup import setup_intents
from streamer.streams.registry import StreamClaim
from streamer.streams.services import Services, compile_contexts
from streamer.streams.sources import DeviceError, MicSource, read_audio_file
from streamer.tools.progress import audio_progress

log = logging.getLogger(__name__)

#: The microphone's stream name.
MIC_STREAM: Final = "mic"


def build_services(config: Config, models: dict[str, Path]) -> Services:
    """Load every bundle (refusing to start on the first bad one) and build the shared parts.

    Raises:
        ModelError: a bundle is missing or corrupt, or the bundles disagree on the sample rate.
        ConfigError: a context (``decoder.contexts``) or the intents file (``intents.file``) is
            unreadable or invalid, or needs a model that is not served.
    """
    contexts = compile_contexts(config.decoder, models)  # first: a bad file stops startup at once
    intents = setup_intents(config.intents, models)
    encoders = {
        name: Encoder.load(name, path, config=config.engine) for name, path in models.items()
    }
    rates = {e.manifest.sample_rate for e in encoders.values()}
    if len(rates) > 1:
        raise ModelError(f"all bundles must share one sample rate, got {sorted(rates)}")
    decoders = {
        name: OutputDecoder(
            enc.manifest,
            abstain_below=config.decoder.abstain_below,
            n_best=config.decoder.n_best,
            bundle_dir=enc.bundle_dir,
            ctc=cast(CtcKind, config.decoder.ctc),
            beam_width=config.decoder.beam_width,
            beam_token_min_logp=config.decoder.beam_token_min_logp,
            grammars=config.decoder.grammars,
            text_head=config.decoder.transcript_intent,
            grammar_max_gap_per_frame=config.decoder.grammar_max_gap_per_frame,
        )
        for name, enc in encoders.items()
    }
    if intents is not None:
        decoders[intents.model].match_intents(intents.name, intents.matcher)
    for name, dec in decoders.items():
        if dec.ctc_search:
            log.info("model %s decodes by %s", name, dec.ctc_search)
        if head := _transcript_head(decoders, name):
            log.info(
                "model %s: intent combined with its transcript head (audio weight %g)",
                name,
                head["audio_weight"],
            )
    log.info("segmenter: %s voice-activity detector", config.segmenter.vad)
    runner = Runner(encoders, config=config.engine)
    return Services(
        config=config,
        runner=runner,
        decoders=decoders,
        # with a bus, events reach the local subscribers through it (streamer/serve/bus.py)
        hub=(BusHub if config.bus.url else Hub)(queue_len=config.server.subscriber_queue),
        contexts=contexts,
        client_errors=ClientErrorLog(interval_s=config.server.client_error_log_interval_s),
    )


def server_info(services: Services) -> dict[str, Any]:
    """What ``/readyz`` reports: models, their provider and the parity recorded at export."""
    models = []
    for name, enc in services.runner.encoders.items():
        m = enc.manifest
        models.append(
            {
                "name": name,
                "arch": m.arch,
                "task": m.task,
                "provider": enc.provider.provider,
                "provider_reason": enc.provider.reason,
                "quantization": m.quantization,
                "decoder": services.decoders[name].ctc_search or None,
                "intents": services.decoders[name].intents_name,
                "transcript_head": _transcript_head(services.decoders, name),
                "parity": None
                if m.parity is None
                else {"max_abs_diff": m.parity.max_abs_diff, "atol": m.parity.atol},
            }
        )
    return {"protocol": proto.PROTOCOL_VERSION, "models": models}


def _transcript_head(decoders: Mapping[str, OutputDecoder], name: str) -> dict[str, float] | None:
    """Model ``name``'s transcript head for ``/readyz`` and the log; None unless it is in use."""
    head = decoders[name].text_head
    in_use = any(d.ctc is not None for d in decoders.values())
    return {"audio_weight": head.audio_weight} if head is not None and in_use else None


async def serve(
    config: Config,
    models: dict[str, Path],
    *,
    mic: str | int | None = None,
    on_ready: Callable[[list[int]], None] | None = None,
    wyoming: str | None = None,
) -> int:
    """Run the daemon until SIGINT/SIGTERM; return the exit code."""
    services = build_services(config, models)
    if config.journal.path is not None:
        services.journal = Journal.open(config.journal, services.hub)
    cluster = None
    if config.bus.url is not None:  # before any stream: names are leased cluster-wide
        from streamer.serve.cluster import join_bus

        cluster = await join_bus(services)
    # before any connection: no client can take the microphone's stream name
    mic_claim = services.streams.admit(MIC_STREAM) if mic is not None else None
    wyoming_server = None
    if wyoming is not None:  # first: a port in use stops startup before anything else runs
        from streamer.serve.wyoming_server import start_wyoming

        wyoming_server = await start_wyoming(services, wyoming)
    server = StreamerServer(services, info=server_info(services), routes=http_routes(services))
    if cluster is not None:
        cluster.serve_with(server)
    # handlers before the port opens: a SIGTERM once a client could connect is a clean stop
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    if (warning := exposure_warning(config.server.host, config.security)) is not None:
        log.warning("%s", warning)
    for port in server.ports:
        log.info(
            "streamer listening on %s://%s:%d (models: %s)",
            "wss" if config.security.certfile else "ws",
            config.server.host,
            port,
            ", ".join(services.runner.encoders),
        )
    if on_ready is not None:
        on_ready(server.ports)
    mic_task = None
    if mic is not None:
        mic_task = asyncio.create_task(_run_mic(services, mic, mic_claim), name="microphone")
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        log.info("shutting down: finishing in-flight utterances")
        if mic_task is not None:
            mic_task.cancel()
            await asyncio.gather(mic_task, return_exceptions=True)
        if wyoming_server is not None:
            await wyoming_server.drain(config.server.shutdown_timeout_s)
        await server.drain(config.server.shutdown_timeout_s)
        if cluster is not None:
            await cluster.close()
        services.runner.close()
        if services.journal is not None:
            services.journal.close()
    log.info("stopped")
    return 0


async def _run_mic(services: Services, device: str | int, claim: StreamClaim | None = None) -> None:
    """Stream a microphone as stream ``mic``; a failing device is logged, the daemon goes on.

    ``claim``: the name, admitted already (``serve`` does so before accepting connections);
    None admits it now. A stream ``mic`` already live (a client's) is logged as an error and
    the device is not opened.
    """
    try:
        if claim is None:
            claim = services.streams.admit(MIC_STREAM)
        await run_source(services, MicSource(None if device == "default" else device), claim)
    except ProtocolError as exc:
        log.error("microphone not started: %s; serving the other streams on", exc)  # noqa: TRY400
    except DeviceError as exc:
        log.error("microphone: %s; serving the other streams on", exc)  # noqa: TRY400


async def transcribe(
    config: Config,
    models: dict[str, Path],
    files: Sequence[Path],
    *,
    jsonl: bool,
    out: TextIO | None = None,
) -> int:
    """Run files through the daemon's own pipeline; print one line per utterance.

    Returns 0 if every file was read, 1 if any utterance failed, 2 if a file could not be read.
    """
    stdout = out or sys.stdout
    services = build_services(config, models)
    status = 0

    def emit(event: proto.ServerEvent) -> None:
        if isinstance(event, proto.Utterance | proto.Error):
            print(event.encode() if jsonl else _readable(event), file=stdout, flush=True)

    try:
        for path in files:
            try:
                audio = read_audio_file(path)
            except StreamerError as exc:
                print(f"streamer: error: {exc}", file=sys.stderr)
                status = 2
                continue
            name = file_stream_name(path)
            total_s = len(audio.samples) / audio.rate_hz
            pipeline = await run_file(
                services,
                audio.samples,
                rate_hz=audio.rate_hz,
                claim=services.streams.admit(name),
                emit=emit,
                progress=functools.partial(
                    audio_progress, rate_hz=audio.rate_hz, total_s=total_s, desc=name
                ),
            )
            if pipeline is not None and pipeline.n_errors and status == 0:
                status = 1
    finally:
        services.runner.close()
    return status


def _readable(event: proto.Utterance | proto.Error) -> str:
    if isinstance(event, proto.Error):
        return f"{event.stream}: error {event.code}: {event.message}"
    parts = [f"{event.stream} [{event.start_ms / 1000:7.2f}-{event.end_ms / 1000:7.2f}s]"]
    if event.transcript is not None:
        parts.append(repr(event.transcript.text))
    if event.intent is not None:
        unsure = ", abstain" if event.intent.abstain else ""
        parts.append(f"intent={event.intent.name} ({event.intent.confidence:.2f}{unsure})")
        if event.intent.understood is False:  # a context's best parse: not to be acted on
            parts.append("(not understood)")
        elif event.intent.intents is not None and event.intent.alternatives:  # cosine n-best
            parts.append(
                "then "
                + ", ".join(f"{a.name} ({a.confidence:.2f})" for a in event.intent.alternatives)
            )
        else:
            parts.extend(f"{slot}={value!r}" for slot, value in (event.intent.slots or {}).items())
    parts.extend(f"{label.name} ({label.confidence:.2f})" for label in event.labels or ())
    if event.value is not None:
        parts.append(f"value={event.value:.3f}")
    return " ".join(parts)
