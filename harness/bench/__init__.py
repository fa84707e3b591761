"""Benchmarks that measure without training, each a Hydra entry point named as its config in conf/:
``python -m harness.bench.scaling``, ``.generation``, ``.overhead``, ``.toeplitz_bench``,
``.toeplitz_roofline``, and on frozen trained models ``.retention`` and ``.invertibility`` (the TMM
paper's two claims; ``trained`` finds the runs with saved weights and their random-init twins);
``measure`` holds the timing and peak-memory helpers they share.
Nothing else imports this package."""
