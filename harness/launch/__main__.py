"""``python -m harness.launch [override ...]``: launcher overrides that fit this machine, for the
Makefile; ``python -m harness.launch --suffix``: the experiment suffix of its profile ("" or "_cpu")."""
import sys

from harness.launch.profile import overrides, suffix

print(suffix() if sys.argv[1:] == ["--suffix"] else " ".join(overrides(sys.argv[1:])))
