# mixbench: `make copy-benchmark` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.mixbench-installed
# Extra Hydra overrides for any benchmark, e.g. make copy-benchmark ARGS="seed=0,1,2"
ARGS   ?=
# Launcher overrides for this machine (harness/launch/profile.py): on a CPU-only machine one single-threaded
# process per core and the CPU-sized mixer list; with several GPUs one process per GPU; with one GPU
# runs one after another. Evaluated after `setup`, when .venv exists.
CPU_MIXERS ?= mamba,hyena,tmm,attention
LAUNCH      = $(shell $(PY) -m harness.launch mixer=$(CPU_MIXERS))
# The recall, ICL and LM benchmarks have CPU-sized experiment variants (conf/experiment/*_cpu.yaml).
SIZE        = $(shell $(PY) -c "import torch; print('' if torch.cuda.is_available() else '_cpu')")

.PHONY: setup test copy-benchmark recall-benchmark icl-benchmark lm-benchmark scaling-benchmark generation-benchmark overhead report clean

setup: $(STAMP)

# torch==2.13.0 first when torch is absent (a CPU wheel lies on disk; a loose requirement would pull
# a multi-GB CUDA build), then the project itself, whose `torch>=2.4` the installed torch satisfies.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
	$(PY) -m pip install --quiet --disable-pip-version-check --config-settings editable_mode=compat -e ".[dev]"
	@touch $(STAMP)

test: setup
	$(PY) -m pytest tests

# The copy benchmark: every mixer x {variable, fixed} x seeds, sized for the machine
# (conf/train/cpu.yaml, or conf/train/gpu.yaml when CUDA is present), then the report.
copy-benchmark: setup
	$(PY) -m harness.run --multirun +experiment=copy_benchmark $(LAUNCH) $(ARGS)
	$(PY) -m harness.report --benchmark copy_benchmark

# Multi-query associative recall (Zoology), in-context learning (regression, automata), language
# modelling on local text at matched parameter counts: freeze the evaluation sets, sweep, report.
recall-benchmark icl-benchmark lm-benchmark: %-benchmark: setup
	$(PY) -m harness.freeze_eval +experiment=$*_benchmark$(SIZE) $(ARGS)
	$(PY) -m harness.run --multirun +experiment=$*_benchmark$(SIZE) $(LAUNCH) $(ARGS)
	$(PY) -m harness.report --benchmark $*_benchmark

# Forward + backward time and memory against sequence length (conf/scaling/{cpu,gpu}.yaml by hardware).
scaling-benchmark: setup
	$(PY) -m harness.bench.scaling $(ARGS)

# Prefill and per-token decode throughput through each mixer's cache or state (conf/generation/).
generation-benchmark: setup
	$(PY) -m harness.bench.generation $(ARGS)

# What the harness adds to a run (start-up, data, logging, evaluation) against pure training.
overhead: setup
	$(PY) -m harness.bench.overhead $(ARGS)

report: setup
	$(PY) -m harness.report --all

clean:
	rm -rf $(VENV) results/logs outputs multirun .pytest_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
