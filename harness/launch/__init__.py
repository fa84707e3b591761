"""Launching: which processes and profiles fit this machine (``profile``), the Hydra entry helpers the
benchmarks share (``entry``), and the sweep's check before anything trains (``preflight``).
``python -m harness.launch`` prints the launcher overrides for the Makefile."""
