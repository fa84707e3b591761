"""The run pipeline: one resolved config in, one record out.

Config schema and checks (``config``, ``fields``), building the task and the model (``model``,
``matching``; a mixer per layer: ``stack``), training (``train``, ``memory``), the device a run holds (``device``, ``gpus``),
evaluation sets (``eval_sets``, ``freeze_eval``), records (``records``), trained weights kept on
request and the model rebuilt from them (``weights``), faults (``faults``), the
environment a record notes (``environment``), and ``execute``, which runs one config and writes its
record. ``python -m harness.run`` is the Hydra entry point. Imports only itself, ``mixers`` and ``tasks``.
"""
