# mixbench: `make copy-benchmark` and `make test` do all set-up on a fresh machine. `make help` lists the targets.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.mixbench-installed
# Extra Hydra overrides for any benchmark, e.g. make copy-benchmark ARGS="seed=0,1,2"; a results_dir=D
# (default results/local: your runs, git-ignored) or published_dir=D among them also tells the report
# where the records are and where its tables go. The shipped records are results/published/runs/:
# runs never write there; each report sets your numbers beside them and ends with what it reproduced.
ARGS   ?=
REPORT_ARGS = $(filter results_dir=% published_dir=%,$(ARGS))
# Launcher overrides for this machine (harness/launch/profile.py): on a CPU-only machine one single-threaded
# process per core and the CPU-sized mixer list; with several GPUs one process per GPU; with one GPU
# runs one after another. Evaluated after `setup`, when .venv exists.
# With CUDA the sweep (after --) is probed for how many runs share a GPU (harness/launch/sizing.py;
# ARGS="gpu.jobs_per_gpu=1" keeps one run per GPU).
CPU_MIXERS ?= mamba,hyena,tmm,attention
# On a CPU-only machine the copy benchmark trains seed 0 of each of its 8 configurations (4 mixers x 2
# protocols; about 5 min of training on 2 cores, from the published records' times) and compares them with
# both published seeds; CPU_SEEDS=0,1 trains the 16 runs (about 10 min). Other sweeps train their own seeds.
launch      = $(shell $(PY) -m harness.launch mixer=$(CPU_MIXERS) $(if $(CPU_SEEDS),seed=$(CPU_SEEDS)) -- $(1) $(ARGS))
# the same for sweeps whose experiment names its own mixers (the window and state-size sweeps)
launch_own  = $(shell $(PY) -m harness.launch -- $(1) $(ARGS))
# The recall, ICL and LM benchmarks have CPU-sized experiment variants (conf/experiment/*_cpu.yaml).
SIZE        = $(shell $(PY) -m harness.launch --suffix)

.PHONY: help setup test copy-benchmark selective-copy-benchmark recall-benchmark icl-benchmark lm-benchmark \
        recall-zoology-figure2 recall-window-sweep recall-state-sweep scaling-benchmark generation-benchmark \
        overhead-benchmark throughput-benchmark retention-benchmark invertibility-benchmark mad-benchmark report published-report clean

help:  ## this list
	@grep -E '^[a-z][a-zA-Z0-9_ -]*:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([^:]*):.*## (.*)/  \1|\2/' | \
	  awk -F'|' '{ printf "%-62s %s\n", $$1, $$2 }'

setup: $(STAMP)  ## a virtual environment in .venv with the project installed (editable)

# torch==2.13.0 first when torch is absent (a CPU wheel lies on disk; a loose requirement would pull
# a multi-GB CUDA build), then the project itself, whose `torch>=2.4` the installed torch satisfies.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
	$(PY) -m pip install --quiet --disable-pip-version-check --config-settings editable_mode=compat -e ".[dev]"
	@touch $(STAMP)

test: setup  ## the test suite (GPU tests skip without CUDA)
	$(PY) -m pytest tests

# The copy benchmarks: every mixer x protocols x seeds, sized for the machine (conf/train/cpu.yaml, or
# conf/train/gpu.yaml when CUDA is present), then the report.
copy-benchmark: CPU_SEEDS = 0
copy-benchmark selective-copy-benchmark: %-benchmark: setup  ## copy / selective copy: every mixer, length generalisation
	$(PY) -m harness.run --multirun +experiment=$(subst -,_,$*)_benchmark $(call launch,+experiment=$(subst -,_,$*)_benchmark) $(ARGS)
	$(PY) -m harness.report --benchmark $(subst -,_,$*)_benchmark $(REPORT_ARGS)
	@$(if $(and $(SIZE),$(filter copy,$*)),echo "CPU-only machine: trained seed(s) $(CPU_SEEDS) of each configuration \
	(CPU_SEEDS=0,1 trains both published seeds); yours beside the published: reproduction.md in the report folder printed above",true)

# Multi-query associative recall (Zoology), in-context learning (regression, automata), language
# modelling on local text at matched parameter counts: freeze the evaluation sets, sweep, report.
recall-benchmark icl-benchmark lm-benchmark: %-benchmark: setup  ## MQAR, in-context learning, language modelling
	$(PY) -m harness.freeze_eval +experiment=$*_benchmark$(SIZE) $(ARGS)
	$(PY) -m harness.run --multirun +experiment=$*_benchmark$(SIZE) $(call launch,+experiment=$*_benchmark$(SIZE)) $(ARGS)
	$(PY) -m harness.report --benchmark $*_benchmark $(REPORT_ARGS)

# MAD's synthetic tasks (Poli et al. 2024): its difficulty sweep (conf/mad_sweep$(SIZE).yaml) is one sweep
# per task and axis (python -m harness.launch.mad prints them), each over MAD's protocol and grid
# (conf/experiment/mad_benchmark$(SIZE).yaml); then the report with MAD's aggregate score.
mad-benchmark: setup  ## MAD: compression, memorization, noisy / fuzzy / plain recall, selective copy; MAD score
	$(PY) -m harness.launch.mad mad_sweep$(SIZE) | while read -r sweep; do \
	  $(PY) -m harness.run --multirun +experiment=mad_benchmark$(SIZE) $$sweep $(call launch,+experiment=mad_benchmark$(SIZE)) $(ARGS) < /dev/null || exit 1; \
	done
	$(PY) -m harness.report --benchmark mad_benchmark $(REPORT_ARGS)

# Beside recall-benchmark (the Based paper's mixture protocol): the Zoology paper's Figure 2 protocol
# (one setting per run, zero filler), and the window and state-size sweeps; each conf/experiment/ file
# names its source. CPU-sized variants as above.
recall-zoology-figure2 recall-window-sweep recall-state-sweep: setup  ## MQAR: Zoology paper's Figure 2 protocol; window and state-size sweeps
	$(PY) -m harness.freeze_eval +experiment=$(subst -,_,$@)$(SIZE) $(ARGS)
	$(PY) -m harness.run --multirun +experiment=$(subst -,_,$@)$(SIZE) $(if $(findstring figure2,$@),$(call launch,+experiment=$(subst -,_,$@)$(SIZE)),$(call launch_own,+experiment=$(subst -,_,$@)$(SIZE))) $(ARGS)
	$(PY) -m harness.report --benchmark $(subst -,_,$@) $(REPORT_ARGS)

# The TMM paper's two claims on frozen models: train the runs they need (conf/experiment/tmm_claims*.yaml,
# weights kept; finished runs are skipped), then measure the trained models and their random-init twins.
# On a CPU-only machine the Toeplitz mixers and attention only.
retention-benchmark invertibility-benchmark: CPU_MIXERS = tnn,hyena,tmm,tmm_flat,attention
retention-benchmark invertibility-benchmark: %-benchmark: setup  ## TMM claims: input retained by one hidden state / Fredholm index of Toeplitz layers
	$(PY) -m harness.run --multirun +experiment=tmm_claims$(SIZE) $(call launch,+experiment=tmm_claims$(SIZE)) $(ARGS)
	$(PY) -m harness.bench.$* benchmark=tmm_claims profile=$(if $(SIZE),cpu,gpu) $(REPORT_ARGS)

scaling-benchmark: setup  ## forward + backward time and memory against sequence length (conf/scaling/)
	$(PY) -m harness.bench.scaling $(ARGS)

generation-benchmark: setup  ## prefill and per-token decode throughput through each mixer's cache (conf/generation/)
	$(PY) -m harness.bench.generation $(ARGS)

overhead-benchmark: setup  ## what the harness adds to a run (start-up, data, logging, evaluation) against pure training
	$(PY) -m harness.bench.overhead $(ARGS)

throughput-benchmark: setup  ## ms per step and runs per hour: sequential, packed, compiled, fused (conf/throughput.yaml)
	$(PY) -m harness.bench.throughput $(ARGS)

report: setup  ## every benchmark's tables and plots from your records, beside the published ones (ARGS="results_dir=D")
	$(PY) -m harness.report --all $(REPORT_ARGS)

published-report: setup  ## the published records' own tables and plots (results/<benchmark>/, the committed ones)
	$(PY) -m harness.report --all --published $(REPORT_ARGS)

clean:  ## remove .venv, logs and caches (records stay)
	rm -rf $(VENV) results/logs outputs multirun .pytest_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
