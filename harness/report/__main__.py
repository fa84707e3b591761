"""``python -m harness.report --benchmark NAME | --all [results_dir=D]``: tables and plots from records."""
from harness.report.cli import main

raise SystemExit(main())
