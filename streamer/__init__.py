"""streamer: a streaming, real-time speech-understanding daemon.

The runtime package imports numpy, onnxruntime and websockets only; torch and transformers are
needed by :mod:`streamer_export` (the ``export`` extra) and never by the daemon.
"""

__version__ = "0.1.0"
