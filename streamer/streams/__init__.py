"""Streams: the per-stream pipeline, the stream registry, and audio sources."""
