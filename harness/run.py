"""Train and evaluate one configuration; write one record. Hydra entry point.

    python -m harness.run mixer=tmm task=copy                  # one run
    python -m harness.run -m +experiment=copy_benchmark        # a sweep

Without a ``train=...`` override the training profile follows the hardware: ``train=gpu`` when
CUDA is visible, ``train=cpu`` otherwise. A finished record with the same config is not rerun
unless ``force=true``.
"""
from __future__ import annotations

import logging
import sys
import time
import traceback
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from harness import eval_sets as frozen
from harness.config import ConfigError, make_model, make_task, make_train_config, resolve_device, to_dict
from harness.environment import environment
from harness.records import read_record, record_path, run_id, write_atomic
from harness.train import Diverged, train

log = logging.getLogger("mixbench")
CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


def execute(cfg: dict) -> dict:
    """Run one resolved configuration and return its record (also written to disk).

    Bad configuration raises ``ConfigError`` before anything trains. A run that diverges, runs out
    of memory or fails otherwise is recorded with that status instead of raising.
    """
    device = resolve_device(cfg.get("device", "auto"))
    task = make_task(cfg["task"])
    train_cfg = make_train_config(cfg["train"])
    path = record_path(Path(cfg["results_dir"]) / "runs", cfg)
    if path.exists() and not cfg.get("force", False):
        try:
            existing = read_record(path)
            if existing.get("status") == "ok":
                log.info("skip: finished record %s exists (force=true reruns it)", path)
                return existing
        except (OSError, ValueError) as err:
            log.warning("rerun: record %s is unreadable (%s)", path, err)
    if train_cfg.threads:
        torch.set_num_threads(train_cfg.threads)
    torch.manual_seed(cfg["seed"])  # model initialisation; data comes from its own generator below
    model = make_model(cfg["model"], cfg["mixer"], task).to(device)
    generator = torch.Generator(device=device).manual_seed(cfg["seed"])
    loaded = frozen.load(cfg["task"], cfg["results_dir"])  # the frozen copy when there is one
    if loaded is not None:
        sets, eval_info = loaded
        eval_info = {k: eval_info[k] for k in ("source", "path", "id", "sha256")}
    else:
        sets = task.eval_sets()
        eval_info = {"source": "generated", "id": frozen.set_id(cfg["task"]),
                     "sha256": {name: frozen.digest(batch) for name, batch in sets.items()}}
    record = {
        "id": run_id(cfg), "status": "running", "config": cfg, "task_summary": task.summary(),
        "mixer": cfg["mixer"]["name"], "backend": model.backend, "params": model.parameter_counts(),
        "max_len": model.max_len, "flops_per_sequence": model.flop_terms(task.max_input_len()),
        "matching": model.matching, "eval_sets": eval_info,
        "environment": environment(device), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    log.info("run %s: %s on %s, %s params (%s mixer), backend %s", record["id"], cfg["mixer"]["name"], task.name,
             f"{record['params']['total']:,}", f"{record['params']['mixer']:,}", model.backend)
    try:
        result = train(model, task, train_cfg, device, generator, description=f"{cfg['mixer']['name']}/{task.name}",
                       eval_sets=sets)
        record.update(status="ok", final=result.final, curve=result.curve, timing=result.timing,
                      memory=result.memory, throughput=result.throughput, train_flops=result.train_flops,
                      steps_done=result.steps_done)
    except Diverged as err:
        record.update(status="diverged", diverged_step=err.step, error=str(err))
    except torch.OutOfMemoryError as err:
        record.update(status="oom", error=str(err).splitlines()[0],
                      sizes={"batch_size": train_cfg.batch_size, "max_input_len": task.max_input_len(),
                             "d_model": cfg["model"]["d_model"], "n_layers": cfg["model"]["n_layers"]})
    except Exception as err:  # recorded, and the sweep goes on
        record.update(status="failed", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
    record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    write_atomic(path, record)
    log.info("%s: %s -> %s", record["status"], record["id"], path)
    if record["status"] == "ok":
        log.info("final: %s", {k: round(v, 4) for k, v in record["final"].items() if isinstance(v, float)})
    return record


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        execute(to_dict(cfg))
    except ConfigError as err:
        log.error("configuration error: %s", err)
        raise SystemExit(2) from None


def default_overrides(argv: list[str]) -> list[str]:
    """Add ``train=gpu`` or ``train=cpu`` unless the command line chose a training profile."""
    if any(a.split("=")[0].lstrip("+~") == "train" for a in argv[1:]):
        return argv
    return argv + ["train=gpu" if torch.cuda.is_available() else "train=cpu"]


if __name__ == "__main__":
    sys.argv = default_overrides(sys.argv)
    main()
