"""Train and evaluate one configuration; write one record. Hydra entry point.

    python -m harness.run mixer=tmm task=copy                  # one run
    python -m harness.run -m +experiment=copy_benchmark        # a sweep, one run after another
    python -m harness.run -m +experiment=copy_benchmark mixer=tmm,attention model.d_model=64,128
                                                               # narrow one sweep key, add another
    ... -m +experiment=copy_benchmark hydra/launcher=cpu_parallel hydra.launcher.n_jobs=2 train.threads=1 concurrent_runs=2
    ... -m +experiment=copy_benchmark hydra/launcher=gpu_parallel      # one run per GPU at a time
    ... -m +experiment=copy_benchmark hydra/launcher=slurm hydra.launcher.partition=gpu

A sweep is checked whole before anything trains (harness.launch.preflight).

Without a ``train=...`` override the training profile follows the hardware: ``train=gpu`` when
CUDA is visible or the Slurm launcher is chosen, ``train=cpu`` otherwise. A finished record with
the same config is not rerun unless ``force=true``. Ctrl-C or SIGTERM stops cleanly: finished
records stay, the interrupted run writes nothing, and the same command later runs what is missing.
"""
from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from harness.run import eval_sets as frozen
from harness.run.config import CONF_DIR, ConfigError, check_forward, make_model, to_dict, validate
from harness.run.device import run_device, set_determinism
from harness.run.environment import environment
from harness.run.faults import failed_fields, is_out_of_memory, oom_fields
from harness.run.recipe import decoding_state, recipe
from harness.run.records import (FINISHED, RunLock, check_writable, mixer_label, read_record, record_path, rerun_path,
                                 run_id, write_atomic)
from harness.run.tracking import tracker
from harness.run.train import Diverged, Part, train, untimed
from harness.run.weights import keep as keep_weights

log = logging.getLogger("mixbench")
# The parts of a run that ``execute(cfg, part)`` announces, with what each covers (overhead's table).
PARTS = {"validate": "validate config, build task", "resume": "resume check", "build": "build model",
         "eval_sets": "data: evaluation sets", "device": "device, determinism", "environment": "environment stamp",
         "forward_check": "forward check", "train": "training loop + evaluation",
         "batches": "data: training batches", "evaluate": "evaluation (learning curve + final)",
         "write": "write record"}
# conf/hydra/launcher/gpu_parallel.yaml: one parallel job per GPU slot of this machine
OmegaConf.register_new_resolver("gpu_slots", lambda per_gpu=1: max(1, torch.cuda.device_count()) * int(per_gpu),
                                replace=True)


def finished_at(path: Path) -> dict | None:
    """The finished (``ok`` or ``diverged``) record at ``path``, if there is a readable one."""
    try:
        existing = read_record(path)
    except (OSError, ValueError):
        return None
    return existing if existing["status"] in FINISHED else None


def finished_record(path: Path, force: bool) -> dict | None:
    """The finished record at ``path`` unless ``force``; an unreadable or unfinished one means rerun."""
    if force or not path.exists():
        return None
    try:
        existing = read_record(path)
    except (OSError, ValueError) as err:
        log.warning("rerun: record %s is unreadable (%s)", path, err)
        return None
    if existing["status"] in FINISHED:
        log.info("skip: finished record %s exists (force=true reruns it)", path)
        return existing
    log.info("rerun: record %s has status %s", path, existing["status"])
    return None


def keeps_previous(previous: dict | None, status: str) -> bool:
    """Whether a (forced) rerun ending with ``status`` must be kept beside ``previous`` rather than
    replace it: a failed rerun never deletes a finished result (only an ``ok`` rerun replaces an
    ``ok`` record, and an ``ok`` or ``diverged`` one a ``diverged`` record)."""
    if previous is None:
        return False
    return status != "ok" and (previous["status"] == "ok" or status not in FINISHED)


def evaluation_sets(cfg: dict, task) -> tuple[dict, dict]:
    """The task's evaluation sets (the frozen copy on disk when there is one) and what the record says
    of them: source, id and SHA-256 digests."""
    loaded = frozen.load(cfg["task"], cfg["results_dir"])
    if loaded is not None:
        sets, info = loaded
        return sets, {k: info[k] for k in ("source", "path", "id", "sha256")}
    sets = task.eval_sets()
    return sets, {"source": "generated", "id": frozen.set_id(cfg["task"]),
                  "sha256": {name: frozen.digest(batch) for name, batch in sets.items()}}


def start_record(cfg: dict, task, model, eval_info: dict, env: dict, sets: dict, train_cfg, device) -> dict:
    """A run's record before it trains: what ran (config, backend, parameters, FLOPs, evaluation sets,
    environment); ``execute`` and ``harness.run.fused`` add the outcome."""
    return {
        "id": run_id(cfg), "status": "running", "config": cfg, "task_summary": task.summary(),
        "mixer": mixer_label(cfg), "backend": model.backend, "params": model.parameter_counts(),
        "max_len": model.max_len, "flops_per_sequence": model.flop_terms(task.max_input_len()),
        "layers": model.layer_summary(task.max_input_len()),
        "matching": model.matching, "eval_sets": eval_info, "state_bits": prompt_state_bits(model, sets),
        "recipe": recipe(model, train_cfg, device),  # what trains, as run: exemptions, overrides, init, precision
        # decoding state (values, all layers) after the task's longest input: the recall report's x-axis
        "state": decoding_state(model, task.max_input_len()),
        "environment": env, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def fault_record_fields(err: BaseException, cfg: dict, train_cfg, task, record: dict, device: torch.device) -> dict:
    """The fields of a run that raised while building or training: ``oom`` with its sizes (and which
    part ran out), or ``failed`` with the traceback (call it inside the ``except``)."""
    if is_out_of_memory(err):
        sizes = {"batch_size": train_cfg.batch_size, "eval_batch_size": train_cfg.eval_batch_size,
                 "max_input_len": task.max_input_len(), "d_model": cfg["model"]["d_model"],
                 "n_layers": cfg["model"]["n_layers"], "params": (record.get("params") or {}).get("total"),
                 "while": "training" if "params" in record else "building the model"}
        return oom_fields(err, sizes, device)
    return failed_fields(err)


def prompt_state_bits(model, sets: dict) -> dict[str, float] | None:
    """Bits of decoding state (all layers, 32 per value: ``SequenceModel.state_bits``) after each
    evaluation set's prompt, the tokens up to its first scored position (copy: ``[BOS] s [SEP]``),
    for the copy report's memory bound; None when a mixer does not say its state size."""
    try:
        return {name: model.state_bits(int(batch.mask.float().argmax(1).max()) + 1) for name, batch in sets.items()}
    except NotImplementedError:
        return None


def execute(cfg: dict, part: Part = untimed) -> dict:
    """Run one resolved configuration and return its record (also written to disk).

    Bad configuration, or a results folder where records cannot be written, raises ``ConfigError``
    before anything trains. Everything from building the model on is the recorded part: a run that
    diverges, runs out of memory (also while building) or fails otherwise is recorded with that
    status instead of raising. A run in flight in another process (another sweep over the same
    folder: its lock is held) is skipped and its record not touched: the returned dict has status
    ``in_flight`` and is not written. ``part(name)`` is entered around each part of the run
    (``PARTS``; the overhead benchmark times them).
    """
    with part("validate"):
        task, train_cfg = validate(cfg)
    with part("resume"):
        runs_dir = Path(cfg["results_dir"]) / "runs"
        path = record_path(runs_dir, cfg)
        existing = finished_record(path, cfg["force"])
    if existing is not None:
        return existing
    problem = check_writable(runs_dir)
    if problem:
        raise ConfigError(problem)  # before training, not after: the results would be thrown away
    lock = RunLock(path)
    if not lock.acquire():
        log.info("skip: run %s is in flight in another process (lock %s held)", run_id(cfg), lock.path)
        return {"id": run_id(cfg), "status": "in_flight", "config": cfg, "lock": str(lock.path)}
    try:
        existing = finished_record(path, cfg["force"])  # another sweep may have finished it meanwhile
        if existing is not None:
            return existing
        return execute_locked(cfg, task, train_cfg, path, part)
    finally:
        lock.release()


def execute_locked(cfg: dict, task, train_cfg, path: Path, part: Part) -> dict:
    """The recorded part of ``execute``, under the run's lock: build, train, evaluate, write."""
    torch.manual_seed(cfg["seed"])  # model initialisation; data comes from its own generator below
    record = {"id": run_id(cfg), "status": "running", "config": cfg, "task_summary": task.summary(),
              "mixer": mixer_label(cfg), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    device = torch.device("cpu")  # the model is built on CPU
    model = tracked = None
    try:
        with part("build"):
            model = make_model(cfg["model"], cfg["mixer"], task)  # on CPU; a mixer refusing its options is a ConfigError
        record.update(backend=model.backend, params=model.parameter_counts(), max_len=model.max_len,
                      flops_per_sequence=model.flop_terms(task.max_input_len()), matching=model.matching)
        with part("eval_sets"):
            sets, record["eval_sets"] = evaluation_sets(cfg, task)
        record["state_bits"] = prompt_state_bits(model, sets)
        with contextlib.ExitStack() as held:
            with part("device"):
                device, gpu_facts = held.enter_context(run_device(cfg))  # a GPU slot, held until the run ends
                set_determinism(cfg["deterministic"])
            if train_cfg.threads:
                torch.set_num_threads(train_cfg.threads)
            with part("environment"):
                record["environment"] = {**environment(device), **gpu_facts}
            log.info("run %s: %s on %s, %s params (%s mixer), backend %s", record["id"], record["mixer"],
                     task.name, f"{record['params']['total']:,}", f"{record['params']['mixer']:,}", model.backend)
            model = model.to(device)
            # the path, and so the FLOPs counted, follow the parameters' device (mamba, tmm)
            record.update(backend=model.backend, flops_per_sequence=model.flop_terms(task.max_input_len()),
                          layers=model.layer_summary(task.max_input_len()),  # per layer: mixer, backend, FLOPs, state
                          recipe=recipe(model, train_cfg, device),  # what trains, as run: exemptions, init, precision
                          # decoding state (values, all layers) after the task's longest input: the recall report's x-axis
                          state=decoding_state(model, task.max_input_len()))
            with part("forward_check"):
                check_forward(model, task, device, cfg["mixer"])  # options that build but cannot run: ConfigError
            generator = torch.Generator(device=device).manual_seed(cfg["seed"])
            tracked = tracker(cfg, path)  # logger=...: curves, config, final metrics (nothing by default)
            with part("train"):
                result = train(model, task, train_cfg, device, generator,
                               description=f"{record['mixer']}/{task.name}", eval_sets=sets, part=part,
                               on_point=lambda point: tracked.safely("point", point))
            record.update(status="ok", final=result.final, curve=result.curve, timing=result.timing,
                          memory=result.memory, throughput=result.throughput, train_flops=result.train_flops,
                          steps_done=result.steps_done)
    except ConfigError:
        raise  # nothing trained, nothing recorded
    except Diverged as err:
        record.update(status="diverged", diverged_step=err.step, error=str(err))
    except Exception as err:  # recorded, and the sweep goes on
        record.update(fault_record_fields(err, cfg, train_cfg, task, record, device))
    if model is not None:
        keep_weights(model, cfg, path, record["status"])  # save_weights=true: the trained weights beside the record
    if "environment" not in record:  # it failed before the device was taken (building): the machine still counts
        record["environment"] = environment(device)
    model = None  # free the device before the next job of this process  # noqa: F841
    record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    previous = finished_at(path) if cfg["force"] else None
    target = path
    if keeps_previous(previous, record["status"]):
        target = rerun_path(path)
        record["rerun_of"] = path.name
        log.warning("force: this rerun ended %s; the finished %s record %s is kept, and this rerun's record "
                    "is written beside it: %s", record["status"], previous["status"], path, target)
    with part("write"):
        write_atomic(target, record)
    if tracked is not None:
        tracked.safely("finish", record)
    log.info("%s: %s -> %s", record["status"], record["id"], target)
    if record["status"] == "ok":
        log.info("final: %s", {k: round(v, 4) for k, v in record["final"].items() if isinstance(v, float)})
    elif record["status"] == "diverged":
        log.warning("diverged at step %s: %s", record["diverged_step"], record["error"])
    else:
        log.warning("%s: %s", record["status"], record["error"])
    return record


def record_lost_run(cfg: dict, reason: str) -> Path | None:
    """Record as ``failed`` a run whose process died (the launcher saw its worker go); where it was
    written, or None when a finished record is already there (the worker died after writing it) or
    the run is in flight in another process. A lost forced rerun is kept beside a finished record."""
    path = record_path(Path(cfg["results_dir"]) / "runs", cfg)
    lock = RunLock(path)
    if not lock.acquire():
        return None
    try:
        previous = finished_at(path)
        if previous is not None and not cfg["force"]:
            return None
        target = rerun_path(path) if previous is not None else path
        now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        task, _ = validate(cfg, check_device=False)
        record = {"id": run_id(cfg), "status": "failed", "config": cfg, "task_summary": task.summary(),
                  "mixer": mixer_label(cfg), "environment": environment(torch.device("cpu")),
                  "error": reason, "finished": now, **({"rerun_of": path.name} if target != path else {})}
        write_atomic(target, record)
        return target
    finally:
        lock.release()


def _interrupt(signum: int, frame) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def stop_on_sigterm() -> None:
    """SIGTERM (a scheduler's cancel, ``kill``) stops like Ctrl-C: no half-written file is left."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    stop_on_sigterm()  # also in joblib workers and Slurm jobs, which do not run __main__
    try:
        execute(to_dict(cfg))
    except ConfigError as err:
        log.error("configuration error: %s", err)
        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # Hydra marks this job failed and goes on with the sweep; it reports the error at the end
        raise SystemExit(2) from None
