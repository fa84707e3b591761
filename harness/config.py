"""Turning a Hydra config into a task, a model and a training config, with every field checked
before any training. Errors name the field and the allowed values.

    validate(cfg)           # every field of a run config: names, types, ranges, combinations
    make_model(...)         # builds the model; a mixer that refuses its options is a ConfigError
"""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

import mixers
import tasks
from harness import fields as F
from harness.faults import is_out_of_memory
from harness.matching import MatchError, match_parameters
from harness.model import POSITIONS, SequenceModel
from harness.train import TrainConfig
from tasks import UnknownTaskError, build_task
from tasks.base import Task, TaskConfigError

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16")
NORMS = ("layernorm", "rmsnorm")
GROUPS = ("mixer", "task", "model", "train")
# Top-level fields besides the groups, with their types (conf/config.yaml holds their defaults).
TOP_LEVEL = {"benchmark": str, "seed": int, "device": str, "results_dir": str, "force": bool,
             "concurrent_runs": int, "deterministic": bool, "gpu": dict}
MODEL = {"d_model": int, "n_layers": int, "mlp_ratio": float, "norm": str, "tie_embeddings": bool,
         "max_len": int | None}
# optional backbone fields: parameter matching (conf/model/matched.yaml) and an explicit MLP width
MODEL_OPTIONAL = {"mlp_hidden": int | None, "match_params": int | None, "match_by": str, "match_tolerance": float,
                  "position": str}
GPU = {"jobs_per_gpu": int, "lock_dir": str}
MAX_SEED = 2**63 - 1
CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


class ConfigError(ValueError):
    """A field of the run configuration is invalid; the message names it."""


def _check(condition: bool, field: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{field}: {message}")


def _check_type(field: str, value: object, annotation: object) -> None:
    problem = F.check(field, value, annotation)
    if problem:
        raise ConfigError(problem)


def _check_keys(group: str, given: dict, valid: dict | set, required: bool = True) -> None:
    unknown = sorted(set(given) - set(valid))
    _check(not unknown, group, f"unknown field(s) {unknown}; valid fields: {', '.join(sorted(valid))}")
    missing = sorted(set(valid) - set(given))
    _check(not (required and missing), group, f"missing field(s) {missing}")


def to_dict(cfg: DictConfig | dict) -> dict:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)


def load(overrides: list[str], config_dir: str = CONF_DIR, config_name: str = "config") -> dict:
    """The resolved run config for ``overrides``, composed exactly as ``python -m harness.run`` does
    (for tests and scripts; not inside a running Hydra app). Hydra's own refusals (a key not in
    the config, bad override syntax, an unknown option of a group) become a ``ConfigError``."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
            return to_dict(compose(config_name=config_name, overrides=list(overrides)))
    except (HydraException, OmegaConfBaseException) as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"override: {message}") from None


def resolve_device(name: str) -> torch.device:
    _check(name in DEVICES, "device", f"must be one of {', '.join(DEVICES)}, got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    _check(name != "cuda" or torch.cuda.is_available(), "device", "cuda was asked for but no CUDA device is visible")
    return torch.device(name)


def check_top_level(cfg: dict) -> None:
    """Names and types of the top-level fields, ranges of the scalar ones, the shape of ``gpu``."""
    _check_keys("config", cfg, set(TOP_LEVEL) | set(GROUPS))
    for group in GROUPS:
        _check(isinstance(cfg[group], dict), group, f"must be a mapping of fields, got {cfg[group]!r}")
    for key, kind in TOP_LEVEL.items():
        _check_type(key, cfg[key], kind)
    _check(0 <= cfg["seed"] <= MAX_SEED, "seed", f"must be an integer in [0, 2**63), got {cfg['seed']}")
    _check(cfg["device"] in DEVICES, "device", f"must be one of {', '.join(DEVICES)}, got {cfg['device']!r}")
    _check(cfg["benchmark"] != "", "benchmark", "must be a non-empty name")
    _check(cfg["results_dir"] != "", "results_dir", "must be a non-empty path")
    _check(cfg["concurrent_runs"] >= 1, "concurrent_runs", f"must be an integer >= 1, got {cfg['concurrent_runs']}")
    _check_keys("gpu", cfg["gpu"], GPU)
    for key, kind in GPU.items():
        _check_type(f"gpu.{key}", cfg["gpu"][key], kind)
    _check(cfg["gpu"]["jobs_per_gpu"] >= 1, "gpu.jobs_per_gpu",
           f"must be an integer >= 1 (1: every job has a GPU of its own), got {cfg['gpu']['jobs_per_gpu']}")


def make_task(task_cfg: dict) -> Task:
    _check("name" in task_cfg, "task.name", "missing")
    _check_type("task.name", task_cfg["name"], str)
    options = {k: v for k, v in task_cfg.items() if k != "name"}
    cls = tasks._TASKS.get(task_cfg["name"])  # noqa: SLF001 - the registry has no public class lookup yet
    if cls is not None:
        hints = F.hints(cls.__init__)
        for key, value in options.items():
            if key in hints:
                _check_type(f"task.{key}", value, hints[key])
    try:
        return build_task(task_cfg["name"], **options)
    except (UnknownTaskError, TaskConfigError) as err:
        raise ConfigError(str(err)) from None


def make_train_config(train_cfg: dict) -> TrainConfig:
    names = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(train_cfg) - names)
    _check(not unknown, "train", f"unknown field(s) {unknown}; valid fields: {', '.join(sorted(names))}")
    missing = sorted(f.name for f in fields(TrainConfig) if f.name not in train_cfg and f.default is not None
                     and f.name not in ("threads", "progress"))
    _check(not missing, "train", f"missing field(s) {missing}")
    hints = F.hints(TrainConfig)
    for key, value in train_cfg.items():
        _check_type(f"train.{key}", value, hints[key])
    tc = TrainConfig(**train_cfg)
    _check(tc.steps >= 1, "train.steps", f"must be an integer >= 1, got {tc.steps!r}")
    _check(tc.batch_size >= 1, "train.batch_size", f"must be an integer >= 1, got {tc.batch_size!r}")
    _check(tc.lr > 0, "train.lr", f"must be > 0, got {tc.lr}")
    _check(tc.weight_decay >= 0, "train.weight_decay", f"must be >= 0, got {tc.weight_decay}")
    _check(all(0 <= b < 1 for b in tc.betas), "train.betas", f"must be two numbers in [0, 1), got {tc.betas}")
    _check(0 <= tc.warmup_steps <= tc.steps, "train.warmup_steps", f"must be in [0, train.steps={tc.steps}], got {tc.warmup_steps}")
    _check(0 <= tc.min_lr_ratio <= 1, "train.min_lr_ratio", f"must be in [0, 1], got {tc.min_lr_ratio}")
    _check(tc.grad_clip >= 0, "train.grad_clip", f"must be >= 0 (0 disables clipping), got {tc.grad_clip}")
    _check(tc.eval_every >= 1, "train.eval_every", f"must be an integer >= 1, got {tc.eval_every!r}")
    _check(tc.eval_batch_size >= 1, "train.eval_batch_size", f"must be an integer >= 1, got {tc.eval_batch_size}")
    _check(tc.precision in PRECISIONS, "train.precision", f"must be one of {', '.join(PRECISIONS)}, got {tc.precision!r}")
    _check(tc.threads is None or tc.threads >= 1, "train.threads", f"must be null or an integer >= 1, got {tc.threads}")
    return tc


def check_model_fields(model_cfg: dict) -> None:
    _check_keys("model", {k: v for k, v in model_cfg.items() if k not in MODEL_OPTIONAL}, MODEL)
    for key, kind in {**MODEL, **MODEL_OPTIONAL}.items():
        if key in model_cfg:
            _check_type(f"model.{key}", model_cfg[key], kind)
    d_model, n_layers, ratio = model_cfg["d_model"], model_cfg["n_layers"], model_cfg["mlp_ratio"]
    _check(d_model >= 1, "model.d_model", f"must be an integer >= 1, got {d_model!r}")
    _check(n_layers >= 1, "model.n_layers", f"must be an integer >= 1, got {n_layers!r}")
    _check(ratio > 0 and int(ratio * d_model) >= 1, "model.mlp_ratio",
           f"must be > 0 and leave the MLP at least one hidden unit (mlp_ratio * d_model >= 1), got {ratio!r}")
    _check(model_cfg["norm"] in NORMS, "model.norm", f"must be one of {', '.join(NORMS)}, got {model_cfg['norm']!r}")
    _check(model_cfg["max_len"] is None or model_cfg["max_len"] >= 1, "model.max_len",
           f"must be null (fit the task) or an integer >= 1, got {model_cfg['max_len']!r}")
    _check(model_cfg.get("position", "none") in POSITIONS, "model.position",
           f"must be one of {', '.join(POSITIONS)}, got {model_cfg.get('position')!r}")


def check_mixer_fields(mixer_cfg: dict) -> None:
    """The mixer's name and its options' names and types (ranges are the mixer's own to check)."""
    _check("name" in mixer_cfg, "mixer.name", "missing")
    name = mixer_cfg["name"]
    _check_type("mixer.name", name, str)
    try:
        valid = mixers.options_of(name)
    except mixers.UnknownMixerError as err:
        raise ConfigError(f"mixer.name: {err}") from None
    options = {k: v for k, v in mixer_cfg.items() if k != "name"}
    unknown = sorted(set(options) - set(valid))
    _check(not unknown, "mixer", f"{name} has no option(s) {unknown}; valid options: {', '.join(valid)}")
    hints = F.hints(mixers.mixer_class(name).__init__)
    for key, value in options.items():
        if key in hints:
            _check_type(f"mixer.{key}", value, hints[key])


def validate(cfg: dict, check_device: bool = True) -> tuple[Task, TrainConfig]:
    """Check every field of a resolved run config; return its task and training config.

    ``check_device=False`` skips whether CUDA is visible here (a Slurm login node plans GPU runs).
    Raises ``ConfigError`` naming the field. The mixer's own range checks run in ``make_model``.
    """
    check_top_level(cfg)
    if check_device:
        resolve_device(cfg["device"])
    task = make_task(cfg["task"])
    train_cfg = make_train_config(cfg["train"])
    check_model_fields(cfg["model"])
    check_mixer_fields(cfg["mixer"])
    return task, train_cfg


def as_annotated(mixer: str, options: dict) -> dict:
    """Integers given for float options become floats (``dt_max=1`` on the command line is an int),
    since some libraries a mixer builds on check types strictly."""
    hints = F.hints(mixers.mixer_class(mixer).__init__)
    return {k: float(v) if hints.get(k) is float and type(v) is int else v for k, v in options.items()}


def _shown(options: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in options.items())


def make_model(model_cfg: dict, mixer_cfg: dict, task: Task) -> SequenceModel:
    """The backbone with its mixer on CPU; any refusal to build is a ``ConfigError`` naming the mixer.

    Also computes the model's FLOPs for the task's longest input and checks per-parameter optimiser
    overrides (``param._optim``), so that options a mixer accepts but cannot use fail here too.
    """
    check_model_fields(model_cfg)
    check_mixer_fields(mixer_cfg)
    name = mixer_cfg["name"]
    options = as_annotated(name, {k: v for k, v in mixer_cfg.items() if k != "name"})
    needed = task.max_input_len()
    max_len = model_cfg["max_len"] or needed
    _check(max_len >= needed, "model.max_len",
           f"is {max_len} but task {task.name} feeds inputs of up to {needed} tokens; raise it or set it to null (fit the task)")
    n_layers, d_model = model_cfg["n_layers"], model_cfg["d_model"]
    mlp_hidden = model_cfg.get("mlp_hidden")
    _check(mlp_hidden is None or mlp_hidden >= 1, "model.mlp_hidden",
           f"must be null (mlp_ratio * d_model) or an integer >= 1, got {mlp_hidden!r}")

    def build(width: int, hidden: int | None) -> SequenceModel:
        return SequenceModel(vocab_size=task.vocab_size, d_model=width, n_layers=n_layers, max_len=max_len,
                             mixer=name, mixer_options=options, mlp_ratio=model_cfg["mlp_ratio"],
                             norm=model_cfg["norm"], tie_embeddings=model_cfg["tie_embeddings"],
                             input_dim=task.input_dim if task.input_kind == "continuous" else 0,
                             output_dim=task.output_dim if task.output_kind == "continuous" else 0,
                             mlp_hidden=hidden, position=model_cfg.get("position", "none"))

    matching = None
    target = model_cfg.get("match_params")
    if target is not None:
        _check(target >= 1, "model.match_params", f"must be null or a parameter count >= 1, got {target!r}")
        try:
            matching = match_parameters(build, target, d_model, n_layers, by=model_cfg.get("match_by", "d_model+mlp"),
                                        tolerance=model_cfg.get("match_tolerance", 0.02))
        except MatchError as err:
            raise ConfigError(f"model.match_params: {name}: {err}") from None
        d_model, mlp_hidden = matching["d_model"], matching["mlp_hidden"] or mlp_hidden
    try:
        model = build(d_model, mlp_hidden)
        model.flop_terms(needed)
    except ImportError as err:
        raise ConfigError(f"mixer ({name}): a package these options need is not installed here ({err}); "
                          f"options: {_shown(options)}") from None
    except Exception as err:  # noqa: BLE001 - whatever a mixer raises while building, its options caused it
        if is_out_of_memory(err):
            raise
        named = any(k in str(err) for k in options)
        raise ConfigError(f"mixer ({name}): {err}" + ("" if named else f" (with d_model={d_model}, "
                                                      f"{_shown(options)})")) from None
    model.matching = matching  # what parameter matching chose (None without it); runs record it
    for p in model.parameters():
        for key, value in getattr(p, "_optim", {}).items():
            _check(not isinstance(value, (int, float)) or value >= 0, f"mixer ({name})",
                   f"gives some parameters {key}={value}, which must be >= 0 (options: {_shown(options)})")
    return model


@torch.no_grad()
def check_forward(model: SequenceModel, task: Task, device: torch.device, mixer_cfg: dict) -> None:
    """One forward pass of a few positions on ``device`` (eval mode: no dropout, no RNG use, no state
    change): catches mixer options that build but cannot run. ``ConfigError`` unless out of memory."""
    was_training = model.training
    model.eval()
    n = min(4, model.max_len)
    if task.input_kind == "continuous":
        inputs = torch.zeros(2, n, task.input_dim, device=device)  # (batch, n, input_dim)
    else:
        inputs = torch.zeros(2, n, dtype=torch.long, device=device)  # (batch, n)
    width = task.output_dim if task.output_kind == "continuous" else task.vocab_size
    try:
        logits = model(inputs)
        _check(tuple(logits.shape) == (2, n, width), "mixer",
               f"the model returned outputs of shape {tuple(logits.shape)}, not (2, {n}, {width})")
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 - any failure of a forward pass here is the options' fault
        if is_out_of_memory(err):
            raise
        options = _shown({k: v for k, v in mixer_cfg.items() if k != "name"})
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ConfigError(f"mixer ({mixer_cfg['name']}): builds but cannot run a forward pass "
                          f"({type(err).__name__}: {first_line}) with {options}") from None
    finally:
        model.train(was_training)
