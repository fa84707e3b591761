"""Fused runs: configs of one architecture that differ only in learning rate, weight decay or seed
(``FUSABLE``) train together in one process, each with its own record (same id, same metrics as the
run made alone). The sweep's launcher ``hydra/launcher=fused`` (``harness.launch.fused``) groups a
sweep's runs with ``fusion_groups`` and hands each group to ``execute_fused``.

How: every member is built, initialised and evaluated as ``harness.run.execute.execute`` does (the
global seed set to its seed before its model is built, the same evaluation sets); its own
``harness.run.train.Trainer`` (its optimiser, its ``train.compile`` mode) steps in lockstep with the
others. Members with the same seed draw from one generator (one batch a step, shared: the batches
each would draw alone); members with different seeds from their own generators and their own task
objects (a task may cache state per generator). The members run one after another inside each
step (``method: loop``): this saves the process start, the evaluation sets, the data of members
that share a seed and, with ``train.compile=cuda_graph``, leaves one graph launch per member and
step; it works for any kernel, custom autograd Functions and Triton kernels included (a
``torch.func.vmap`` over stacked parameters is not implemented). Memory is measured for the
process: a member's ``memory`` is the group's (the record's ``fused`` field says so), and its
``timing.train_s`` counts its own steps plus the shared batches' drawing time.
"""
from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path

import torch

from harness.run.config import ConfigError, check_forward, make_model, validate
from harness.run.device import run_device, set_determinism
from harness.run.environment import environment
from harness.run.execute import evaluation_sets, fault_record_fields, finished_record, start_record
from harness.run.records import mixer_label, record_path, run_id, write_atomic
from harness.run.train import Diverged, Trainer, draw_batch, progress_bar

log = logging.getLogger("mixbench")
# The fields fused members may differ in: their optimiser settings and their seed (initialisation, data).
FUSABLE = ("train.lr", "train.weight_decay", "seed")
METHOD = "loop"


def fusion_key(cfg: dict) -> str:
    """What members of one fused group share: the whole config except ``FUSABLE`` (and ``force``)."""
    rest = json.loads(json.dumps(cfg, default=str))
    rest.pop("seed", None)
    rest.pop("force", None)
    for key in ("lr", "weight_decay"):
        rest["train"].pop(key, None)
    return json.dumps(rest, sort_keys=True)


def fusion_groups(cfgs: list[dict]) -> list[list[int]]:
    """Indices of ``cfgs`` grouped by ``fusion_key``, in the order each group first appears."""
    groups: dict[str, list[int]] = {}
    for i, cfg in enumerate(cfgs):
        groups.setdefault(fusion_key(cfg), []).append(i)
    return list(groups.values())


def execute_fused(cfgs: list[dict]) -> list[dict]:
    """Run the configs of one fusion group together; return their records (also written to disk), in
    the order of ``cfgs``. A finished record is returned as it is (unless ``force``); a member that
    diverges or fails is recorded so and the others go on. Bad configuration raises ``ConfigError``
    before anything trains."""
    if len({fusion_key(c) for c in cfgs}) > 1:
        raise ValueError("execute_fused: the configs differ in more than " + ", ".join(FUSABLE))
    checked = [validate(cfg) for cfg in cfgs]  # (task, train config) of every member
    records: list[dict | None] = []
    todo = []
    for i, cfg in enumerate(cfgs):
        existing = finished_record(record_path(Path(cfg["results_dir"]) / "runs", cfg), cfg["force"])
        records.append(existing)
        if existing is None:
            todo.append(i)
    if not todo:
        return records  # type: ignore[return-value]
    first = cfgs[todo[0]]
    members = {}
    for i in todo:
        torch.manual_seed(cfgs[i]["seed"])  # model initialisation, as execute does
        members[i] = make_model(cfgs[i]["model"], cfgs[i]["mixer"], checked[i][0])
    sets, eval_info = evaluation_sets(first, checked[todo[0]][0])
    ids = [run_id(cfgs[i]) for i in todo]
    with contextlib.ExitStack() as held:
        device, gpu_facts = held.enter_context(run_device(first))  # one GPU slot for the whole group
        set_determinism(first["deterministic"])
        train_cfg = checked[todo[0]][1]
        if train_cfg.threads:
            torch.set_num_threads(train_cfg.threads)
        env = {**environment(device), **gpu_facts}
        trainers, live = {}, {}
        for i in todo:
            cfg, (task, tc), model = cfgs[i], checked[i], members[i]
            record = start_record(cfg, task, model, eval_info, env, sets, tc, device)
            record["fused"] = {"method": METHOD, "members": ids, "differ_in": list(FUSABLE),
                               "memory": "peak of the whole group (one process)"}
            records[i] = record
            try:
                model = model.to(device)
                record.update(backend=model.backend, flops_per_sequence=model.flop_terms(task.max_input_len()),
                              layers=model.layer_summary(task.max_input_len()))
                check_forward(model, task, device, cfg["mixer"])
                trainers[i] = Trainer(model, task, tc, device, sets)
                live[i] = True
            except ConfigError:
                raise
            except Exception as err:  # recorded, and the others go on
                record.update(fault_record_fields(err, cfg, tc, task, record, device))
        # one generator (and task object, which may cache state per generator) per distinct seed
        sources = {}
        for i in trainers:
            seed = cfgs[i]["seed"]
            if seed not in sources:
                sources[seed] = (checked[i][0], torch.Generator(device=device).manual_seed(seed))
        log.info("fused: %d runs in one process (%s), %d data streams: %s", len(trainers), METHOD, len(sources),
                 ", ".join(ids))
        with progress_bar(train_cfg.progress) as bar:
            job = bar.add_task(f"fused {len(trainers)} x {mixer_label(first)}/{checked[todo[0]][0].name}",
                               total=train_cfg.steps, status="")
            for step in range(train_cfg.steps):
                if not any(live.values()):
                    break
                batches = {}
                for seed, (task, generator) in sources.items():
                    if any(live[i] for i in trainers if cfgs[i]["seed"] == seed):
                        t0 = time.perf_counter()
                        batches[seed] = (draw_batch(task, step, train_cfg.batch_size, generator),
                                         time.perf_counter() - t0)
                for i, trainer in trainers.items():
                    if not live[i]:
                        continue
                    batch, data_s = batches[cfgs[i]["seed"]]
                    checked[i][0].set_step(step)
                    try:
                        trainer.step(step, batch, data_s)
                    except Diverged as err:
                        live[i] = False
                        records[i].update(status="diverged", diverged_step=err.step, error=str(err))
                    except Exception as err:  # recorded, and the others go on
                        live[i] = False
                        records[i].update(fault_record_fields(err, cfgs[i], checked[i][1], checked[i][0], records[i],
                                                              device))
                bar.advance(job)
        for i, trainer in trainers.items():
            if live[i]:
                result = trainer.result()
                records[i].update(status="ok", final=result.final, curve=result.curve, timing=result.timing,
                                  memory=result.memory, throughput=result.throughput, train_flops=result.train_flops,
                                  steps_done=result.steps_done)
        trainers = members = None  # free the device before the next group  # noqa: F841
        for i in todo:
            records[i]["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            path = record_path(Path(cfgs[i]["results_dir"]) / "runs", cfgs[i])
            write_atomic(path, records[i])
            log.info("%s: %s -> %s", records[i]["status"], records[i]["id"], path)
    return records  # type: ignore[return-value]
