"""``python -m harness.launch [override ...]``: launcher overrides that fit this machine, for the
Makefile; ``python -m harness.launch --suffix``: the experiment suffix of its profile ("" or "_cpu")."""
import logging
import sys

from harness.launch.profile import overrides, suffix

# python -m harness.launch [launcher-side overrides ...] [-- sweep overrides ...]: the sweep's are probed, not echoed
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")  # stdout holds only the overrides
args = sys.argv[1:]
own, sweep = (args[:args.index("--")], args[args.index("--") + 1:]) if "--" in args else (args, [])
print(suffix() if own == ["--suffix"] else " ".join(overrides(own, sweep)))
