"""Reports: tables and plots from records. ``kit`` is the public toolkit, with the generic report any
task gets; one module per benchmark family (``copy``, ``recall``, ``icl``, ``lm``) names its tasks in
``TASKS`` and builds on the kit; ``scaling`` writes the scaling benchmark's tables; ``cli`` is
``python -m harness.report --benchmark NAME | --all [results_dir=D]``."""
