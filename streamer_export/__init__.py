"""Checkpoint -> ONNX bundle export (the ``export`` extra: torch, transformers, onnx).

Importing this package is cheap; torch and transformers load only when an export runs. The entry
point is :func:`streamer_export.cli.main` (``bin/export_onnx``); the pipeline is
:func:`streamer_export.exporter.export_bundle`.
"""
