"""Configuration: precedence of file, environment and flags, and clear errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from streamer.config import Config, EngineConfig, ServerConfig, load_config
from streamer.engine.bundles import resolve_models
from streamer.errors import ConfigError
from streamer.protocol import ENDPOINTING_KNOBS
from streamer.segmenter_config import SegmenterConfig


def test_defaults() -> None:
    """No file, env or flags gives the documented defaults."""
    assert load_config() == Config()
    assert Config().server.port == 8765


def test_precedence_file_env_flags(tmp_path: Path) -> None:
    """Flags beat environment variables, which beat the TOML file."""
    cfg = tmp_path / "c.toml"
    cfg.write_text("[server]\nport = 1000\nhost = '0.0.0.0'\n[engine]\nworkers = 3\n")
    env = {"STREAMER_SERVER_PORT": "2000", "STREAMER_ENGINE_PROVIDER": "cpu", "OTHER": "x"}
    config = load_config(path=cfg, env=env, overrides={"server": {"port": 3000}})
    assert config.server == ServerConfig(host="0.0.0.0", port=3000)
    assert config.engine == EngineConfig(provider="cpu", workers=3)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[nope]\nx = 1\n", "unknown config section"),
        ("[server]\nprot = 1\n", "unknown setting server.prot"),
        ("[server]\nport = 70000\n", "server.port must be 0-65535"),
        ("[server]\nmax_connections = 0\n", "server.max_connections must be positive"),
        ("[engine]\nprovider = 'tpu'\n", "engine.provider"),
        ("[decoder]\nabstain_below = 2.0\n", "abstain_below"),
        ("[decoder]\ncontext_blank_penalty = -1.0\n", "decoder.context_blank_penalty"),
        ("server = 1\n", "must be a [table]"),
        ("[server\n", "config file"),
    ],
)
def test_bad_files_are_clear(tmp_path: Path, text: str, message: str) -> None:
    """Every kind of bad config file names what is wrong."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_config(path=cfg)


def test_env_values_are_typed() -> None:
    """An environment value that does not parse as the field's type is refused."""
    with pytest.raises(ConfigError, match=r"server\.port must be int"):
        load_config(env={"STREAMER_SERVER_PORT": "many"})
    assert load_config(env={"STREAMER_SERVER_PING_TIMEOUT_S": "2.5"}).server.ping_timeout_s == 2.5


def test_resolve_models(tmp_path: Path) -> None:
    """Named and bare --model values resolve; an empty models folder is a clear error."""
    assert resolve_models(["a=/x/y", "/p/q"]) == {"a": Path("/x/y"), "q": Path("/p/q")}
    with pytest.raises(ConfigError, match="given twice"):
        resolve_models(["a=/x", "a=/y"])
    with pytest.raises(ConfigError, match="no model bundles"):
        resolve_models([], models_dir=tmp_path)
    (tmp_path / "m1").mkdir()
    (tmp_path / "m1" / "manifest.json").write_text("{}")
    assert resolve_models([], models_dir=tmp_path) == {"m1": tmp_path / "m1"}


def test_endpointing_knobs_are_segmenter_settings() -> None:
    """Every endpointing knob a client may send names a SegmenterConfig field of the same unit."""
    fields = {f.name for f in dataclasses.fields(SegmenterConfig)}
    assert set(ENDPOINTING_KNOBS) <= fields


def test_security_and_journal_sections_live_in_the_core_config() -> None:
    """[security] and [journal] are config dataclasses; the serve modules name the same classes."""
    from streamer import config
    from streamer.serve.journal import JournalConfig
    from streamer.serve.security import SecurityConfig

    assert (JournalConfig, SecurityConfig) == (config.JournalConfig, config.SecurityConfig)
    loaded = load_config(overrides={"security": {"token": "t0k"}, "journal": {"fsync": "always"}})
    assert (loaded.security.token, loaded.journal.fsync) == ("t0k", "always")
    with pytest.raises(ConfigError, match=r"journal\.fsync"):
        load_config(overrides={"journal": {"fsync": "sometimes"}})
