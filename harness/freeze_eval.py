"""``python -m harness.freeze_eval``: the evaluation sets to disk (``harness.run.freeze_eval``)."""
import sys

from harness.run.freeze_eval import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
