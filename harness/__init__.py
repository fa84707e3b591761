"""Everything between conf/ and the pluggable parts, by role: ``harness.run`` (the run pipeline: one
config in, one record out), ``harness.launch`` (what fits this machine, Hydra entry helpers, the
sweep's preflight), ``harness.bench`` (benchmarks that measure without training) and
``harness.report`` (tables and plots from records)."""
