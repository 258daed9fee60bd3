# Every target creates/uses the project venv (.venv) and installs what it needs itself.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PF     := $(PY) -m pythia_forensics
export PYTHONUNBUFFERED := 1
export DISABLE_SAFETENSORS_CONVERSION := 1

.PHONY: setup test test-fast demo figures sweep scale experiments bench clean help

help:
	@echo "make demo         train the mini suite, replay probes, analyse, write results/demo/"
	@echo "make test         install and run the test suite"
	@echo "make figures      regenerate figures and report from stored results (results/demo)"
	@echo "make sweep        support-knob sweep on the mini suite (results/sweep)"
	@echo "make scale        scale grid on the mini suite: 5 sizes x 6 knobs, 3 seeds near the flip (results/scale; ~18 min, resumes)"
	@echo "make experiments  kill ladder and rescue arms on the mini suite (results/experiments)"
	@echo "make bench        benchmark against minicons, lm-eval and a full-logits baseline"

setup:
	@bash scripts/bootstrap.sh

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

demo: setup
	$(PF) demo --out results/demo

figures: setup
	$(PF) figures --results results/demo --out results/demo/figures

sweep: setup
	$(PF) sweep --out results/sweep

# 40 models (5 sizes x 4 support knobs, 3 seeds at the 2 knobs nearest the flip); a kill resumes.
# Run time on 2 cores: docs/mini-suite.md ("Scale grid").
scale: setup
	$(PF) scale --out results/scale

experiments: setup
	$(PF) experiment all --out results/experiments

# Pythia's tokenizer is not shipped: as the tests do, look beside the checkout (../shared)
# unless PF_NEOX_TOKENIZER names another copy. ~20 minutes on 2 cores (benchmarks/settings.py).
bench: setup
	PF_NEOX_TOKENIZER="$${PF_NEOX_TOKENIZER:-$(abspath ../shared/tokenizers/gpt-neox-20b.json)}" \
	$(PY) -m benchmarks --out results/bench

clean:
	rm -rf results/demo results/bench results/sweep results/scale results/experiments
