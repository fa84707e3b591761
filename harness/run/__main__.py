"""``python -m harness.run``: train and evaluate one config, or a sweep (``-m``); see ``harness.run.execute``."""
from harness.run.execute import cli

cli()
