"""``python -m harness.run``: train and evaluate one config, or a sweep (``-m``); see ``harness.run.execute``.

The training profile follows the hardware (``harness.launch.profile``) unless the command line
chooses one. Ctrl-C or SIGTERM stops cleanly (exit status 130).
"""
import os
import sys

from harness.launch.profile import with_profile
from harness.run.device import CUBLAS_DETERMINISTIC
from harness.run.execute import main, stop_on_sigterm

sys.argv = with_profile(sys.argv, "train")
if "deterministic=true" in sys.argv[1:]:  # before anything starts cuBLAS (see harness.run.device)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_DETERMINISTIC)
stop_on_sigterm()
try:
    main()
except KeyboardInterrupt as err:
    print(f"interrupted ({str(err) or 'Ctrl-C'}): finished records are intact; "
          "the same command runs only what is missing", file=sys.stderr)
    raise SystemExit(130) from None
