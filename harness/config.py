"""Turning a Hydra config into a task, a model and a training config, with every field checked
before any training. Errors name the field and the allowed values."""
from __future__ import annotations

from dataclasses import fields

import torch
from omegaconf import DictConfig, OmegaConf

import mixers
from harness.matching import MatchError, match_parameters
from harness.model import SequenceModel
from harness.train import TrainConfig
from tasks import UnknownTaskError, build_task
from tasks.base import Task, TaskConfigError

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16")
NORMS = ("layernorm", "rmsnorm")


class ConfigError(ValueError):
    """A field of the run configuration is invalid; the message names it."""


def _check(condition: bool, field: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{field}: {message}")


def to_dict(cfg: DictConfig | dict) -> dict:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)


def resolve_device(name: str) -> torch.device:
    _check(name in DEVICES, "device", f"must be one of {', '.join(DEVICES)}, got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    _check(name != "cuda" or torch.cuda.is_available(), "device", "cuda was asked for but no CUDA device is visible")
    return torch.device(name)


def make_task(task_cfg: dict) -> Task:
    options = {k: v for k, v in task_cfg.items() if k != "name"}
    _check("name" in task_cfg, "task.name", "missing")
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
    tc = TrainConfig(**train_cfg)
    _check(isinstance(tc.steps, int) and tc.steps >= 1, "train.steps", f"must be an integer >= 1, got {tc.steps!r}")
    _check(isinstance(tc.batch_size, int) and tc.batch_size >= 1, "train.batch_size", f"must be an integer >= 1, got {tc.batch_size!r}")
    _check(tc.lr > 0, "train.lr", f"must be > 0, got {tc.lr}")
    _check(tc.weight_decay >= 0, "train.weight_decay", f"must be >= 0, got {tc.weight_decay}")
    _check(len(tc.betas) == 2 and all(0 <= b < 1 for b in tc.betas), "train.betas", f"must be two numbers in [0, 1), got {tc.betas}")
    _check(0 <= tc.warmup_steps <= tc.steps, "train.warmup_steps", f"must be in [0, train.steps={tc.steps}], got {tc.warmup_steps}")
    _check(0 <= tc.min_lr_ratio <= 1, "train.min_lr_ratio", f"must be in [0, 1], got {tc.min_lr_ratio}")
    _check(tc.grad_clip >= 0, "train.grad_clip", f"must be >= 0 (0 disables clipping), got {tc.grad_clip}")
    _check(isinstance(tc.eval_every, int) and tc.eval_every >= 1, "train.eval_every", f"must be an integer >= 1, got {tc.eval_every!r}")
    _check(tc.eval_batch_size >= 1, "train.eval_batch_size", f"must be >= 1, got {tc.eval_batch_size}")
    _check(tc.precision in PRECISIONS, "train.precision", f"must be one of {', '.join(PRECISIONS)}, got {tc.precision!r}")
    _check(tc.threads is None or tc.threads >= 1, "train.threads", f"must be null or >= 1, got {tc.threads}")
    return tc


def make_model(model_cfg: dict, mixer_cfg: dict, task: Task) -> SequenceModel:
    _check("name" in mixer_cfg, "mixer.name", "missing")
    name = mixer_cfg["name"]
    try:
        valid = mixers.options_of(name)
    except mixers.UnknownMixerError as err:
        raise ConfigError(f"mixer.name: {err}") from None
    options = {k: v for k, v in mixer_cfg.items() if k != "name"}
    unknown = sorted(set(options) - set(valid))
    _check(not unknown, "mixer", f"{name} has no option(s) {unknown}; valid options: {', '.join(valid)}")
    d_model, n_layers = model_cfg.get("d_model"), model_cfg.get("n_layers")
    _check(isinstance(d_model, int) and d_model >= 1, "model.d_model", f"must be an integer >= 1, got {d_model!r}")
    _check(isinstance(n_layers, int) and n_layers >= 1, "model.n_layers", f"must be an integer >= 1, got {n_layers!r}")
    _check(model_cfg.get("mlp_ratio", 0) > 0, "model.mlp_ratio", f"must be > 0, got {model_cfg.get('mlp_ratio')!r}")
    _check(model_cfg.get("norm") in NORMS, "model.norm", f"must be one of {', '.join(NORMS)}, got {model_cfg.get('norm')!r}")
    needed = task.max_input_len()
    max_len = model_cfg.get("max_len") or needed
    _check(isinstance(max_len, int) and max_len >= needed, "model.max_len",
           f"is {max_len} but task {task.name} feeds inputs of up to {needed} tokens; raise it or set it to null (fit the task)")
    mlp_hidden = model_cfg.get("mlp_hidden")
    _check(mlp_hidden is None or (isinstance(mlp_hidden, int) and mlp_hidden >= 1), "model.mlp_hidden",
           f"must be null (mlp_ratio * d_model) or an integer >= 1, got {mlp_hidden!r}")

    def build(width: int, hidden: int | None) -> SequenceModel:
        return SequenceModel(vocab_size=task.vocab_size, d_model=width, n_layers=n_layers, max_len=max_len,
                             mixer=name, mixer_options=options, mlp_ratio=model_cfg["mlp_ratio"],
                             norm=model_cfg["norm"], tie_embeddings=bool(model_cfg.get("tie_embeddings", False)),
                             input_dim=task.input_dim if task.input_kind == "continuous" else 0,
                             output_dim=task.output_dim if task.output_kind == "continuous" else 0,
                             mlp_hidden=hidden)

    matching = None
    target = model_cfg.get("match_params")
    if target is not None:
        _check(isinstance(target, int) and target >= 1, "model.match_params",
               f"must be null or a parameter count >= 1, got {target!r}")
        try:
            matching = match_parameters(build, target, d_model, n_layers, by=model_cfg.get("match_by", "d_model+mlp"),
                                        tolerance=model_cfg.get("match_tolerance", 0.02))
        except MatchError as err:
            raise ConfigError(f"model.match_params: {name}: {err}") from None
        d_model, mlp_hidden = matching["d_model"], matching["mlp_hidden"] or mlp_hidden
    try:
        model = build(d_model, mlp_hidden)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"mixer ({name}): {err}") from None
    model.matching = matching  # what parameter matching chose (None without it); runs record it
    return model
