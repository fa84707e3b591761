"""Opt-in experiment tracking: ``logger=wandb|mlflow|tensorboard`` (conf/logger/, none by default).

The harness's own hook: a run's config when it starts, each point of its learning curve (the
scalars: ``train_loss``, the ``*_in`` summaries, ``eval/<set>/<metric>``) as it is evaluated, and
its status and final metrics when its record is written. Everything is written inside the results
folder, ``<results_dir>/tracking/``: W&B in offline mode (``wandb/``; ``wandb sync`` uploads it
later), MLflow to a local file store (``mlruns/``, with ``MLFLOW_ALLOW_FILE_STORE=true``, which MLflow 3
asks for; ``mlflow ui --backend-store-uri file://...``), TensorBoard
event files (``tensorboard/<record stem>/``). The JSON record stays the source of truth: a tracker
that fails is logged once and the run goes on. The packages are the optional extra ``tracking``
(``pip install -e .[tracking]``); a logger whose package is missing is a configuration error
before anything trains.
"""
from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

log = logging.getLogger("mixbench")
PACKAGES = {"wandb": "wandb", "mlflow": "mlflow", "tensorboard": "tensorboard"}  # logger name -> module it needs
FOLDER = "tracking"  # under results_dir


def logger_problem(logger: dict | None) -> str | None:
    """A problem naming ``logger`` when it names no known tracker or its package is not installed."""
    if logger is None:
        return None
    name = logger.get("name") if isinstance(logger, dict) else None
    if name not in PACKAGES:
        return f"logger: must be null or one of {', '.join(PACKAGES)} (conf/logger/), got {name!r}"
    if importlib.util.find_spec(PACKAGES[name]) is None:
        return (f"logger: {name} is not installed; install the optional extra (pip install -e '.[tracking]') "
                "or drop logger=")
    return None


def scalars(point: dict) -> dict[str, float]:
    """The numbers of a learning-curve point, nested evaluation metrics as ``eval/<set>/<metric>``."""
    out = {}
    for key, value in point.items():
        if key == "eval" and isinstance(value, dict):
            for name, metrics in value.items():
                out.update({f"eval/{name}/{m}": float(v) for m, v in metrics.items() if isinstance(v, (int, float))})
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step":
            out[key] = float(value)
    return out


class Tracker:
    """No tracking (``logger: null``); the base of the three."""

    def __init__(self, cfg: dict, stem: str):
        self.cfg, self.stem = cfg, stem
        self.folder = Path(cfg["results_dir"]) / FOLDER
        self.broken = False

    def start(self) -> None: ...

    def point(self, point: dict) -> None: ...

    def finish(self, record: dict) -> None: ...

    def safely(self, what: str, *args) -> None:
        """Call ``self.<what>(*args)``; a tracker that fails is logged once and left off."""
        if self.broken:
            return
        try:
            getattr(self, what)(*args)
        except Exception as err:  # noqa: BLE001 - the record is the source of truth; tracking never fails a run
            self.broken = True
            log.warning("logger %s failed in %s (%s: %s); the run goes on, its record is complete",
                        type(self).__name__, what, type(err).__name__, err)


def final_scalars(record: dict) -> dict[str, float]:
    final = record.get("final") or {}
    return {f"final/{k}": v for k, v in scalars(final).items()}


class Wandb(Tracker):
    def start(self) -> None:
        import wandb

        options = self.cfg["logger"]
        self.folder.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=options.get("project", "mixbench"), name=self.stem, dir=str(self.folder),
                              mode=options.get("mode", "offline"), config=self.cfg, reinit="finish_previous")

    def point(self, point: dict) -> None:
        self.run.log(scalars(point), step=int(point["step"]))

    def finish(self, record: dict) -> None:
        self.run.summary.update({"status": record["status"], **final_scalars(record)})
        self.run.finish(exit_code=0 if record["status"] == "ok" else 1)


class Mlflow(Tracker):
    def start(self) -> None:
        import mlflow

        # the local file store, which mlflow-skinny (no SQLAlchemy) can write; MLflow 3 asks for this opt-in
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.client = mlflow.tracking.MlflowClient(tracking_uri=(self.folder / "mlruns").resolve().as_uri())
        name = self.cfg["logger"].get("experiment", "mixbench")
        found = self.client.get_experiment_by_name(name)
        experiment = found.experiment_id if found else self.client.create_experiment(name)
        self.run_id = self.client.create_run(experiment, run_name=self.stem).info.run_id
        for key, value in flat(self.cfg).items():
            self.client.log_param(self.run_id, key, str(value)[:6000])

    def point(self, point: dict) -> None:
        for key, value in scalars(point).items():
            self.client.log_metric(self.run_id, key.replace("/", "."), value, step=int(point["step"]))

    def finish(self, record: dict) -> None:
        for key, value in final_scalars(record).items():
            self.client.log_metric(self.run_id, key.replace("/", "."), value)
        self.client.set_tag(self.run_id, "status", record["status"])
        self.client.set_terminated(self.run_id, "FINISHED" if record["status"] == "ok" else "FAILED")


class Tensorboard(Tracker):
    def start(self) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(self.folder / "tensorboard" / self.stem))
        self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in flat(self.cfg).items()))

    def point(self, point: dict) -> None:
        for key, value in scalars(point).items():
            self.writer.add_scalar(key, value, int(point["step"]))

    def finish(self, record: dict) -> None:
        final = final_scalars(record)
        self.writer.add_hparams({k: str(v) for k, v in flat(self.cfg).items() if k.split(".")[0] in
                                 ("mixer", "task", "model", "train", "seed")}, final or {"final/none": 0.0},
                                run_name=".")
        self.writer.add_text("status", record["status"])
        self.writer.close()


def flat(config: dict, prefix: str = "") -> dict[str, object]:
    """``{"train": {"lr": 1}} -> {"train.lr": 1}``."""
    out: dict[str, object] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


TRACKERS = {"wandb": Wandb, "mlflow": Mlflow, "tensorboard": Tensorboard}


def tracker(cfg: dict, record_path: Path) -> Tracker:
    """The run's tracker (``cfg['logger']``), started; the base ``Tracker`` (nothing) without one."""
    options = cfg.get("logger")
    chosen = TRACKERS[options["name"]](cfg, Path(record_path).stem) if options else Tracker(cfg, Path(record_path).stem)
    chosen.safely("start")
    return chosen
