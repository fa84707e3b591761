"""Reports: tables and plots from records. ``kit`` is the public toolkit and the copy-task report;
one module per benchmark family (``recall``, ``icl``, ``lm``, ``scaling``) builds on it.
``python -m harness.report --benchmark NAME`` or ``--all``."""
