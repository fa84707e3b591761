"""``python -m harness.launch [override ...]``: launcher overrides that fit this machine, for the Makefile."""
import sys

from harness.launch.profile import overrides

print(" ".join(overrides(sys.argv[1:])))
