"""Everything between conf/ and the pluggable parts, by role: ``harness.run`` (the run pipeline: one
config in, one record out), ``harness.launch`` (what fits this machine, Hydra entry helpers, the
sweep's preflight), ``harness.bench`` (benchmarks that measure without training) and
``harness.report`` (tables and plots from records)."""
import sys
from pathlib import Path

# Hydra loads launchers only from the ``hydra_plugins`` namespace package: mixbench's (the isolated
# parallel launcher, the fused one) live in harness/launch/plugins/hydra_plugins/, which joins that
# namespace through this path entry, so the repository's top level stays as it is.
_PLUGINS = str(Path(__file__).resolve().parent / "launch" / "plugins")
if _PLUGINS not in sys.path:
    sys.path.append(_PLUGINS)
