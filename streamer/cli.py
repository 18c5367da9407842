"""Command line: ``streamer serve | transcribe | devices``; parses flags into Config, no logic.

Exit codes: 0 success, 1 runtime failure, 2 bad usage or configuration (one line on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from streamer import __version__
from streamer.config import Config, load_config
from streamer.engine.bundles import resolve_models
from streamer.errors import ConfigError, StreamerError
from streamer.tools import bench

log = logging.getLogger(__name__)


_MODELS_AFTER_COMMAND = "models_after_command"


class _SubCommands:
    """The sub-parsers action, giving every sub-command the global flags as a parent parser."""

    def __init__(self, action: Any, parent: argparse.ArgumentParser) -> None:
        self._action = action
        self._parent = parent

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        """Add the sub-command ``name`` (``argparse`` keywords), global flags included."""
        parser: argparse.ArgumentParser = self._action.add_parser(
            name, parents=[self._parent], **kwargs
        )
        return parser


def _global_flags(parser: argparse.ArgumentParser, *, after_command: bool) -> None:
    """Add ``--log-level``, ``--config``, ``--model``, ``--provider`` to ``parser``.

    Before the sub-command they carry the defaults. After it their defaults are SUPPRESS, so a
    sub-parser leaves a flag given before the sub-command as it was; ``--model`` given after it
    goes to its own list, appended to the one before by :func:`_parse`.
    """

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if after_command else value

    flags = parser.add_argument_group("global options (before or after the sub-command)")
    flags.add_argument(
        "--log-level",
        default=default(os.environ.get("STREAMER_LOG_LEVEL", "info")),
        choices=["debug", "info", "warning", "error"],
        help="default: info",
    )
    flags.add_argument(
        "--config",
        type=Path,
        default=default(os.environ.get("STREAMER_CONFIG")),
        help="TOML file with [server], [engine], [decoder], [segmenter] tables",
    )
    flags.add_argument(
        "--model",
        action="append",
        dest=_MODELS_AFTER_COMMAND if after_command else "model",
        default=default([]),
        metavar="[NAME=]BUNDLE",
        help="bundle folder to serve (repeatable); default: every bundle in exported/",
    )
    flags.add_argument(
        "--provider", choices=["auto", "cuda", "cpu"], default=default(None), help="default: auto"
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="streamer", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"streamer {__version__}")
    _global_flags(p, after_command=False)
    common = argparse.ArgumentParser(add_help=False)
    _global_flags(common, after_command=True)
    sub = _SubCommands(p.add_subparsers(dest="command", required=True), common)

    serve = sub.add_parser("serve", help="run the daemon")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="TCP port, 0 for any free one (default 8765)")
    serve.add_argument(
        "--mic",
        nargs="?",
        const="default",
        metavar="DEVICE",
        help="also stream a microphone (index or name) as stream 'mic'",
    )
    serve.add_argument(
        "--wyoming",
        default=os.environ.get("STREAMER_WYOMING"),
        metavar="tcp://HOST:PORT",
        help="also speak the Wyoming protocol (Home Assistant) there (env STREAMER_WYOMING)",
    )
    _security_flags(serve)
    _context_flag(serve)
    _intents_flags(serve)
    _bus_flag(serve)

    tr = sub.add_parser("transcribe", help="run audio files through the daemon's pipeline")
    tr.add_argument("files", nargs="+", type=Path)
    tr.add_argument(
        "--jsonl",
        action="store_true",
        help="print one JSON line per utterance (default: readable lines)",
    )
    _context_flag(tr)
    _intents_flags(tr)

    sub.add_parser("devices", help="list audio input devices")
    bench.add_parser(sub)

    ins = sub.add_parser("inspect", help="plot how a file is cut and read (waveform, VAD, results)")
    ins.add_argument("file", type=Path)
    ins.add_argument("--png", type=Path, required=True, metavar="OUT", help="picture to write")

    jr = sub.add_parser("journal", help="print journal records a consumer missed")
    jr.add_argument("--path", help="journal file (default: journal.path from the config)")
    jr.add_argument("--since", metavar="SEQ|TIME", help="after this seq, or from this time")
    jr.add_argument("--stream", help="only this stream's events")
    _bus_flag(jr)
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse a ``streamer`` command line; global flags may come before or after the sub-command.

    Raises:
        SystemExit: bad usage (argparse has printed why), ``--help`` or ``--version``.
    """
    args = _parser().parse_args(argv)
    args.model = [*args.model, *vars(args).pop(_MODELS_AFTER_COMMAND, [])]
    return args


def _security_flags(serve: argparse.ArgumentParser) -> None:
    serve.add_argument(
        "--token",
        default=os.environ.get("STREAMER_TOKEN"),
        help="bearer token every endpoint requires (env STREAMER_TOKEN; /healthz stays open)",
    )
    serve.add_argument("--token-file", help="read the token from the first line of this file")
    serve.add_argument(
        "--origin",
        action="append",
        default=[],
        help="allowed browser Origin, e.g. https://app.example (repeatable; default: any)",
    )
    serve.add_argument("--certfile", help="PEM certificate (chain): serve wss:// (TLS)")
    serve.add_argument("--keyfile", help="PEM private key of --certfile")
    serve.add_argument("--journal", help="append every emitted event to this JSONL file")
    serve.add_argument(
        "--journal-fsync", choices=["none", "interval", "always"], help="default: interval"
    )


def _bus_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bus",
        default=os.environ.get("STREAMER_BUS"),
        metavar="redis://HOST:PORT[/DB]",
        help="event bus shared with other replicas (env STREAMER_BUS; docs/scaling.md)",
    )


def _context_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--context",
        action="append",
        default=[],
        metavar="[NAME=]FILE.yaml",
        help="Rhino-format context to understand utterances in (repeatable; the first is the "
        "default; a client's start may name another)",
    )


def _intents_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--intents",
        metavar="FILE",
        help="intents defined by example sentences (TOML or YAML), matched on a sentence-"
        "embedding model (README: Intents from example sentences)",
    )
    parser.add_argument(
        "--text-embedder",
        metavar="DIR",
        help="the text embedder bundle that embeds the examples (default: exported/text-minilm-l6)",
    )


def _overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {"server": {}, "engine": {}}
    for key in ("host", "port"):
        if getattr(args, key, None) is not None:
            out["server"][key] = getattr(args, key)
    if args.provider is not None:
        out["engine"]["provider"] = args.provider
    security = ("token", "token_file", "certfile", "keyfile")
    out["security"] = {k: getattr(args, k) for k in security if getattr(args, k, None)}
    if getattr(args, "origin", None):
        out["security"]["origins"] = ",".join(args.origin)
    journal = (("journal", "path"), ("journal_fsync", "fsync"))
    out["journal"] = {k: getattr(args, f) for f, k in journal if getattr(args, f, None)}
    if getattr(args, "context", None):
        commas = [c for c in args.context if "," in c]
        if commas:  # decoder.contexts is a comma-separated list
            raise ConfigError(f"--context {commas[0]}: a file name with a comma cannot be listed")
        out["decoder"] = {"contexts": ",".join(args.context)}
    out["bus"] = {"url": args.bus} if getattr(args, "bus", None) else {}
    intents = (("intents", "file"), ("text_embedder", "text_embedder"))
    out["intents"] = {k: getattr(args, f) for f, k in intents if getattr(args, f, None)}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``streamer`` command; returns the exit code."""
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return _dispatch(args)
    except StreamerError as exc:
        print(f"streamer: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    from streamer import app

    if args.command == "bench":
        return bench.main(args)

    if args.command == "devices":
        from streamer.streams.sources import list_devices

        for dev in list_devices():
            print(json.dumps(dev))
        return 0
    config: Config = load_config(path=args.config, env=os.environ, overrides=_overrides(args))
    if args.command == "journal":
        from streamer.serve.journal import print_journal

        path = args.path or config.journal.path
        return print_journal(
            path, since=args.since, stream=args.stream, out=sys.stdout, bus=config.bus
        )
    models = resolve_models(args.model, embed=bool(config.intents.file))
    if args.command == "serve":
        mic = None if args.mic is None else (int(args.mic) if args.mic.isdigit() else args.mic)
        return asyncio.run(app.serve(config, models, mic=mic, wyoming=args.wyoming))
    if args.command == "inspect":
        from streamer.tools.inspect import inspect_file

        return asyncio.run(inspect_file(config, models, args.file, png=args.png))
    return asyncio.run(app.transcribe(config, models, args.files, jsonl=args.jsonl))
