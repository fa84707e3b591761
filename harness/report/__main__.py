"""``python -m harness.report --benchmark NAME | --all [--results-dir D]``: tables and plots from records."""
from harness.report.kit import main

raise SystemExit(main())
