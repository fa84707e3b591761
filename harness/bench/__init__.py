"""Benchmarks that measure without training, each a Hydra entry point named as its config in conf/:
``python -m harness.bench.scaling``, ``.generation``, ``.overhead``, ``.toeplitz_bench``,
``.toeplitz_roofline``; ``measure`` holds the timing and peak-memory helpers they share.
Nothing else imports this package."""
