"""``python -m harness.run``: train and evaluate one config, or a sweep (``-m``); see ``harness.run.execute``.

The training profile follows the hardware (``harness.launch.profile``) unless the command line
chooses one. Ctrl-C or SIGTERM stops cleanly (exit status 130). A config file that is not valid
YAML is named, with the line, in one line (exit status 2), not a traceback.
"""
import os
import sys

from harness.launch.isolated import RunLost
from harness.launch.profile import with_profile
from harness.run.config import ConfigError, yaml_error_line
from harness.run.device import CUBLAS_DETERMINISTIC
from harness.run.execute import main, stop_on_sigterm

sys.argv = with_profile(sys.argv, "train")
if "deterministic=true" in sys.argv[1:]:  # before anything starts cuBLAS (see harness.run.device)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_DETERMINISTIC)
stop_on_sigterm()
os.environ.setdefault("HYDRA_FULL_ERROR", "1")  # Hydra's errors reach the handler below, which shortens them
try:
    main()
except Exception as err:  # noqa: BLE001 - one line for what a user can fix; a traceback for the rest
    from hydra.errors import CompactHydraException
    from omegaconf.errors import OmegaConfBaseException

    line = yaml_error_line(err)
    if line is not None:
        print(f"configuration file error: {line}", file=sys.stderr)
        raise SystemExit(2) from None
    if isinstance(err, (ConfigError, RunLost)):  # a sweep's failed job, reported at its end (already logged)
        print(f"sweep finished with a failed job: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    if isinstance(err, CompactHydraException):  # what Hydra itself prints for these, without the traceback
        cause = f"\n{err.__cause__}" if isinstance(err.__cause__, OmegaConfBaseException) else ""
        print(f"{err}{cause}", file=sys.stderr)
        raise SystemExit(1) from None
    raise
except KeyboardInterrupt as err:
    print(f"interrupted ({str(err) or 'Ctrl-C'}): finished records are intact; "
          "the same command runs only what is missing", file=sys.stderr)
    raise SystemExit(130) from None
