"""Build the frame detector a :class:`~streamer.segmenter_config.SegmenterConfig` names."""

from __future__ import annotations

from streamer.segmenter_config import SegmenterConfig
from streamer.vad import SileroVad, Vad, WebRtcVad
from streamer.vad_learned import LearnedVad


def make_vad(config: SegmenterConfig) -> Vad:
    """Build the frame detector ``config.vad`` names, with the config's knobs."""
    if config.vad == "silero":
        return SileroVad(frame_ms=config.frame_ms)
    if config.vad == "learned":
        return LearnedVad(frame_ms=config.frame_ms)
    return WebRtcVad(
        frame_ms=config.frame_ms,
        mode=config.vad_mode,
        full_scale_snr_db=config.full_scale_snr_db,
        thump_ratio_db=config.thump_ratio_db,
        noise_window_ms=config.noise_window_ms,
        unvoiced_cap=config.unvoiced_cap,
        voicing_threshold=config.voicing_threshold,
        revise_drop_db=config.revise_drop_db,
    )
