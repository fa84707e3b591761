"""The overhead script measures a real run against a bare loop and prints its table."""
from __future__ import annotations

from harness.bench import overhead
from tests.harness.helpers import TINY


def test_overhead_table_accounts_for_the_run():
    rows = dict(overhead.measure(["train=test", *TINY, "mixer.heads=2"], repeats=1, with_startup=False))
    total, pure = rows["= run total (compose to record)"], rows["= run total (compose to record)"] - rows[
        "= harness overhead (total - pure training)"]
    assert total > 0 and pure == rows["pure training (bare loop, same batches)"] > 0
    parts = [v for k, v in rows.items() if not k.startswith(("[per process]", "="))]
    assert abs(sum(parts) - total) < 0.05 * total + 0.05  # the parts add up to the run (up to untimed glue)
    text = overhead.table(list(rows.items()))
    assert "evaluation (learning curve + final)" in text and "% of run" in text
