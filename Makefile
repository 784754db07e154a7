# Every target creates .venv with pip when it is missing.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
CONFIG ?= configs/sentiment_mr_auto.yaml

.PHONY: train pretrain test browser demo bench clean lock

$(VENV)/bin/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; install Python 3.11 or run 'make PYTHON=/path/to/python3.11 ...'"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Installs are pinned by constraints.txt: the exact versions the test suite last passed with
# (regenerate it with `make lock` after a green `make test` on new versions).
LOCK := constraints.txt

$(STAMP): pyproject.toml $(LOCK) | $(VENV)/bin/python
	$(PY) -m pip install -q -c $(LOCK) -e .
	@touch $@

# One install for the package and its test extras (the package's own stamp is then current too).
$(TEST_STAMP): pyproject.toml $(LOCK) | $(VENV)/bin/python
	$(PY) -m pip install -q -c $(LOCK) -e '.[test]'
	@touch $(STAMP) $@

# The lock file from this environment: every installed distribution but the project itself, with
# local version labels dropped (torch 2.13.0+cpu is pinned as 2.13.0, which the CPU wheel satisfies).
lock: | $(VENV)/bin/python
	@{ echo "# The versions \`make test\` passed with; regenerate: make lock (see docs/testing.md)."; \
	  $(PY) -m pip freeze --exclude-editable --disable-pip-version-check | sed -E 's/\+[A-Za-z0-9.]+$$//' \
	    | grep -v -i '^autogpt[-_]jax' | LC_ALL=C sort -f; } > $(LOCK)
	@echo "wrote $(LOCK) ($$(grep -vc '^#' $(LOCK)) pins)"

train: $(STAMP)
	@test -f $(CONFIG) || { echo "error: config $(CONFIG) not found; pass CONFIG=configs/<name>.yaml"; exit 2; }
	$(PY) -m autogpt_jax.train --config_path $(CONFIG) --checkpoint.resume true

pretrain: $(STAMP)
	$(PY) -m autogpt_jax.train --config_path configs/pretrain_bert_tiny.yaml --checkpoint.resume true

# Two pytest processes: the tests that need 8 simulated devices, then everything else on one
# device (tiny models run ~1.2-1.7x faster there). Both share one compilation cache directory; each
# runs its tests on one pytest-xdist worker per core (pyproject's addopts).
test: $(TEST_STAMP) browser
	@cache=$$(mktemp -d -t autogpt_jax_jit_XXXX); trap 'rm -rf "$$cache"' EXIT; \
	JAX_COMPILATION_CACHE_DIR=$$cache XLA_FLAGS=--xla_force_host_platform_device_count=8 \
	  $(PY) -m pytest -q tests -m multidevice --durations=5 && \
	JAX_COMPILATION_CACHE_DIR=$$cache XLA_FLAGS=--xla_force_host_platform_device_count=1 \
	  $(PY) -m pytest -q tests -m "not multidevice" --durations=15

# The demo's browser test drives Debian's Chromium; installed with apt where root or sudo allows,
# otherwise that one test is skipped with its reason.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" -eq 0 ]; then SUDO=""; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO=none; fi; \
	  if [ "$$SUDO" = none ]; then echo "note: chromium is missing and apt needs root; the browser test will be skipped"; \
	  else echo "installing chromium (apt) for the browser test ..."; \
	    $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null \
	      || echo "note: apt could not install chromium; the browser test will be skipped"; fi; }

# The demo's models: trained first when their exports are missing (each with its progress bars).
# The Sentiment tab serves the student distilled from the best recipe (configs/sentiment_mr_best.yaml,
# an ensemble of three SmolLM2 prompt-LoRA models: 87 min here the first time, 2026-12-05, a slow
# day; 42 min of it is the three members labelling the pool; its stages show their progress bars).
SENTIMENT_EXPORT := runs/sentiment_mr_best/export/student/autogpt_jax.json
SUPPORT_EXPORT   := runs/support_qa/export/autogpt_jax.json

demo: $(STAMP)
	@test -f $(SENTIMENT_EXPORT) || { echo "training the sentiment model and its student (configs/sentiment_mr_best.yaml) ..."; \
	  $(PY) -m autogpt_jax.train --config_path configs/sentiment_mr_best.yaml --checkpoint.resume true; }
	@test -f $(SUPPORT_EXPORT) || { echo "training the customer-service models (configs/support_qa.yaml) ..."; \
	  $(PY) -m autogpt_jax.train --config_path configs/support_qa.yaml --checkpoint.resume true; }
	$(PY) demo/app.py --host 127.0.0.1 --port 7860

bench: $(TEST_STAMP)
	$(PY) scripts/bench_models.py
	$(PY) scripts/bench_train.py

clean:
	rm -rf $(VENV) .pytest_cache
