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
from harness.run.records import FINISHED, read_record, record_path, run_id, write_atomic
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
        "mixer": cfg["mixer"]["name"], "backend": model.backend, "params": model.parameter_counts(),
        "max_len": model.max_len, "flops_per_sequence": model.flop_terms(task.max_input_len()),
        "matching": model.matching, "eval_sets": eval_info, "state_bits": prompt_state_bits(model, sets),
        "recipe": recipe(model, train_cfg, device),  # what trains, as run: exemptions, overrides, init, precision
        # decoding state (values, all layers) after the task's longest input: the recall report's x-axis
        "state": decoding_state(model, task.max_input_len()),
        "environment": env, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def fault_record_fields(err: BaseException, cfg: dict, train_cfg, task, record: dict, device: torch.device) -> dict:
    """The fields of a run that raised while training: ``oom`` with its sizes, or ``failed`` with the
    traceback (call it inside the ``except``)."""
    if is_out_of_memory(err):
        sizes = {"batch_size": train_cfg.batch_size, "eval_batch_size": train_cfg.eval_batch_size,
                 "max_input_len": task.max_input_len(), "d_model": cfg["model"]["d_model"],
                 "n_layers": cfg["model"]["n_layers"], "params": record["params"]["total"]}
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

    Bad configuration raises ``ConfigError`` before anything trains. A run that diverges, runs out
    of memory or fails otherwise is recorded with that status instead of raising. ``part(name)``
    is entered around each part of the run (``PARTS``; the overhead benchmark times them).
    """
    with part("validate"):
        task, train_cfg = validate(cfg)
    with part("resume"):
        path = record_path(Path(cfg["results_dir"]) / "runs", cfg)
        existing = finished_record(path, cfg["force"])
    if existing is not None:
        return existing
    torch.manual_seed(cfg["seed"])  # model initialisation; data comes from its own generator below
    with part("build"):
        model = make_model(cfg["model"], cfg["mixer"], task)  # on CPU; a mixer refusing its options is a ConfigError
    with part("eval_sets"):
        sets, eval_info = evaluation_sets(cfg, task)
    with contextlib.ExitStack() as held:
        with part("device"):
            device, gpu_facts = held.enter_context(run_device(cfg))  # a GPU slot, held until the run ends
            set_determinism(cfg["deterministic"])
        if train_cfg.threads:
            torch.set_num_threads(train_cfg.threads)
        with part("environment"):
            env = {**environment(device), **gpu_facts}
        record = start_record(cfg, task, model, eval_info, env, sets, train_cfg, device)
        log.info("run %s: %s on %s, %s params (%s mixer), backend %s", record["id"], cfg["mixer"]["name"], task.name,
                 f"{record['params']['total']:,}", f"{record['params']['mixer']:,}", model.backend)
        try:
            model = model.to(device)
            # the path, and so the FLOPs counted, follow the parameters' device (mamba, tmm)
            record.update(backend=model.backend, flops_per_sequence=model.flop_terms(task.max_input_len()))
            with part("forward_check"):
                check_forward(model, task, device, cfg["mixer"])  # options that build but cannot run: ConfigError
            generator = torch.Generator(device=device).manual_seed(cfg["seed"])
            with part("train"):
                result = train(model, task, train_cfg, device, generator,
                               description=f"{cfg['mixer']['name']}/{task.name}", eval_sets=sets, part=part)
            record.update(status="ok", final=result.final, curve=result.curve, timing=result.timing,
                          memory=result.memory, throughput=result.throughput, train_flops=result.train_flops,
                          steps_done=result.steps_done)
        except ConfigError:
            raise  # nothing trained, nothing recorded
        except Diverged as err:
            record.update(status="diverged", diverged_step=err.step, error=str(err))
        except Exception as err:  # recorded, and the sweep goes on
            record.update(fault_record_fields(err, cfg, train_cfg, task, record, device))
        keep_weights(model, cfg, path, record["status"])  # save_weights=true: the trained weights beside the record
        model = None  # free the device before the next job of this process  # noqa: F841
        record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        with part("write"):
            write_atomic(path, record)
    log.info("%s: %s -> %s", record["status"], record["id"], path)
    if record["status"] == "ok":
        log.info("final: %s", {k: round(v, 4) for k, v in record["final"].items() if isinstance(v, float)})
    elif record["status"] == "diverged":
        log.warning("diverged at step %s: %s", record["diverged_step"], record["error"])
    else:
        log.warning("%s: %s", record["status"], record["error"])
    return record


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
