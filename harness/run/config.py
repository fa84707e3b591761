"""Turning a Hydra config into a task, a model and a training config, with every field checked
before any training. Errors name the field and the allowed values.

    validate(cfg)           # every field of a run config, once: names and types (SCHEMA), ranges, combinations
    make_model(...)         # builds the model from a validated config; a mixer that refuses its options is a ConfigError
"""
from __future__ import annotations

import math
import os
from dataclasses import MISSING, dataclass, fields
from dataclasses import field as dc_field
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from harness.run import fields as F
from harness.run.faults import is_out_of_memory
from harness.run.matching import MatchError, match_parameters
from harness.run.model import ACTIVATIONS, CHANNEL_MIXERS, INITS, ORDERS, POSITIONS, SequenceModel
from harness.run import stack as stacks
from harness.run.step import COMPILE_MODES, HEAD_POSITIONS
from harness.run.tracking import logger_problem
from harness.run.train import EXEMPTION_RULES, SCHEDULES, TrainConfig
from harness.run.records import CONF_DIR as CONF_PATH, config_default, plain_name_problem, published_problem
import mixers
import tasks
from tasks.base import Task, TaskConfigError

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16")
NORMS = ("layernorm", "rmsnorm")
GROUPS = ("mixer", "task", "model", "train")
# Top-level fields besides the groups, with their types (conf/config.yaml holds their defaults).
TOP_LEVEL = {"benchmark": str, "seed": int, "device": str, "results_dir": str, "force": bool,
             "concurrent_runs": int, "deterministic": bool, "save_weights": bool, "gpu": dict}
# added after records were first written (older records' configs lack it): where the published records are
TOP_LEVEL_OPTIONAL = {"published_dir": str, "logger": dict | None}
MODEL = {"d_model": int, "n_layers": int, "mlp_ratio": float, "norm": str, "tie_embeddings": bool,
         "max_len": int | None}
# optional backbone fields: parameter matching (conf/model/matched.yaml) and an explicit MLP width
MODEL_OPTIONAL = {"mlp_hidden": int | None, "match_params": int | None, "match_by": str, "match_tolerance": float,
                  "position": str, "init": str, "short_conv": int, "order": str, "mlp_activation": str,
                  "final_norm": bool, "stack": list | None, "channel_mixer": str, "swiglu_multiple_of": int}
GPU = {"jobs_per_gpu": int, "lock_dir": str}
# Mixer options that are sizes or counts wherever a mixer has them: an integer >= 1 (or null where
# the mixer allows it); a zero or negative one would otherwise fail deep inside the mixer.
POSITIVE_MIXER_OPTIONS = ("heads", "headdim", "d_state", "d_conv", "expand", "ngroups", "chunk_size",
                          "subchunk_size", "block_size", "feature_dim", "rpe_dim", "rpe_layers")
MAX_SEED = 2**63 - 1
CONF_DIR = str(CONF_PATH)


class ConfigError(ValueError):
    """A field of the run configuration is invalid; the message names it."""


def _check(condition: bool, field: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{field}: {message}")


def _check_name(field: str, value: object) -> None:
    problem = plain_name_problem(field, value)
    if problem:
        raise ConfigError(problem)


def _check_type(field: str, value: object, annotation: object) -> None:
    problem = F.check(field, value, annotation)
    if problem:
        raise ConfigError(problem)


@dataclass(frozen=True)
class Fields:
    """The typed schema of one group of a run config: its required and optional fields, each with
    the annotation its value must satisfy (``harness.run.fields``). Defaults live in conf/, not here."""

    required: dict[str, object]
    optional: dict[str, object] = dc_field(default_factory=dict)

    @classmethod
    def of(cls, config_class: type) -> "Fields":
        """A dataclass's fields: those without a default are required."""
        hints = F.hints(config_class)
        return cls({f.name: hints[f.name] for f in fields(config_class) if f.default is MISSING},
                   {f.name: hints[f.name] for f in fields(config_class) if f.default is not MISSING})

    def check(self, group: str, given: dict, prefix: str = "") -> None:
        """Names (unknown, missing) and types of ``given``; the message names the group or the field."""
        self.check_names(group, given)
        self.check_types(given, prefix)

    def check_names(self, group: str, given: dict) -> None:
        valid = {**self.required, **self.optional}
        unknown = sorted(set(given) - set(valid))
        _check(not unknown, group, f"unknown field(s) {unknown}; valid fields: {', '.join(sorted(valid))}")
        missing = sorted(set(self.required) - set(given))
        _check(not missing, group, f"missing field(s) {missing}")

    def check_types(self, given: dict, prefix: str = "") -> None:
        """Each value against its annotation; a ``Fields`` annotation is a group with its own schema."""
        for key, kind in {**self.required, **self.optional}.items():  # in the schema's order
            if key not in given:
                continue
            value = given[key]
            if isinstance(kind, Fields):
                _check(isinstance(value, dict), f"{prefix}{key}", f"must be a mapping of fields, got {value!r}")
            else:
                _check_type(f"{prefix}{key}", value, kind)


# The run config's schema, group by group; the mixer's and the task's options are typed by their
# constructors' signatures (``mixers.options_of``, ``tasks.options_of``).
SCHEMA = {"gpu": Fields(GPU, {"sizing": dict}), "model": Fields(MODEL, MODEL_OPTIONAL), "train": Fields.of(TrainConfig)}
SCHEMA["config"] = Fields({**TOP_LEVEL, "mixer": Fields({}), "task": Fields({}), "model": SCHEMA["model"],
                           "train": SCHEMA["train"]}, TOP_LEVEL_OPTIONAL)


def sweep_mixers(*left_out: str) -> str:
    """Every registered mixer except ``left_out``, comma-separated, for a sweep's ``mixer`` parameter:
    ``mixer: ${sweep_mixers:mamba2}`` in conf/experiment/, so that a new mixer joins every benchmark.
    tests/harness/test_sweep.py names what each benchmark leaves out, and why."""
    unknown = sorted(set(left_out) - set(mixers.available()))
    _check(not unknown, "hydra.sweeper.params.mixer", f"sweep_mixers leaves out unknown mixer(s) {unknown}; "
                                                       f"valid mixers: {', '.join(mixers.available())}")
    return ",".join(m for m in mixers.available() if m not in left_out)


OmegaConf.register_new_resolver("sweep_mixers", sweep_mixers, replace=True)
# conf/config.yaml: the log folder of a command is unique to its process (cached: a sweep's jobs see
# the launching process's id); the GPU lock folder is the user's own
OmegaConf.register_new_resolver("process_id", lambda: os.getpid(), replace=True, use_cache=True)
OmegaConf.register_new_resolver("user_id", lambda: os.getuid(), replace=True)


def short_conv_unless(mixer: str, kernel_size: int, own: list) -> int:
    """``kernel_size`` unless ``mixer`` is one of ``own`` (those with a short convolution of their own),
    then 0: ``model.short_conv: ${short_conv_unless:${mixer.name},3,[mamba,hyena]}`` gives Zoology's
    BaseConv to the mixers Zoology pairs it with, in one sweep over every mixer."""
    return 0 if mixer in own else int(kernel_size)


OmegaConf.register_new_resolver("short_conv_unless", short_conv_unless, replace=True)


def epoch_steps(epochs: int, examples: int | None, batch_size: int) -> int:
    """Training steps of ``epochs`` passes over a fixed training set of ``examples`` in batches of
    ``batch_size`` (the last batch of an epoch partial, as a data loader gives it): ``train.steps:
    ${epoch_steps:200,${task.num_train_examples},${train.batch_size}}`` (MAD trains 200 epochs)."""
    _check(examples is not None, "task.num_train_examples",
           "is null (fresh examples every step), so a budget in epochs has no length; give a training-set size")
    return int(epochs) * math.ceil(int(examples) / int(batch_size))


OmegaConf.register_new_resolver("epoch_steps", epoch_steps, replace=True)


def to_dict(cfg: DictConfig | dict) -> dict:
    """The resolved config as plain containers, a hybrid stack expanded to every layer's options
    (``harness.run.stack.expand``: the run's id then covers them); ``ConfigError`` for a bad entry."""
    plain = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    try:
        return stacks.expand(plain)
    except stacks.StackError as err:
        raise ConfigError(str(err)) from None


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


def yaml_error_line(err: BaseException) -> str | None:
    """``"<file>, line N: <problem>"`` when ``err`` (or what caused it) is a YAML syntax error, else None."""
    import yaml

    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, yaml.MarkedYAMLError):
            mark, start = err.problem_mark or err.context_mark, err.context_mark
            where = f"{mark.name}, line {mark.line + 1}, column {mark.column + 1}" if mark else "a config file"
            what = "; ".join(x for x in (err.context, err.problem) if x) or type(err).__name__
            if start is not None and mark is not None and start.line != mark.line:
                what += f" (the construct began on line {start.line + 1})"
            return f"{where}: {what} (YAML syntax)"
        err = err.__cause__ or err.__context__
    return None


def resolve_device(name: str) -> torch.device:
    _check(name in DEVICES, "device", f"must be one of {', '.join(DEVICES)}, got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    _check(name != "cuda" or torch.cuda.is_available(), "device", "cuda was asked for but no CUDA device is visible")
    return torch.device(name)


def check_top_level(cfg: dict) -> None:
    """Names and types of the top-level fields, ranges of the scalar ones, the shape of ``gpu``."""
    SCHEMA["config"].check_names("config", cfg)
    groups = {k: v for k, v in cfg.items() if k in GROUPS}
    SCHEMA["config"].check_types(groups)  # each group a mapping first, so that the fields' messages can name it
    SCHEMA["config"].check_types({k: v for k, v in cfg.items() if k not in GROUPS})
    _check(0 <= cfg["seed"] <= MAX_SEED, "seed", f"must be an integer in [0, 2**63), got {cfg['seed']}")
    _check(cfg["device"] in DEVICES, "device", f"must be one of {', '.join(DEVICES)}, got {cfg['device']!r}")
    _check(cfg["benchmark"] != "", "benchmark", "must be a non-empty name")
    _check_name("benchmark", cfg["benchmark"])  # it names the report's folder
    _check(cfg["results_dir"] != "", "results_dir", "must be a non-empty path")
    _check(cfg.get("published_dir") != "", "published_dir", "must be a non-empty path")
    problem = published_problem(cfg["results_dir"], cfg.get("published_dir") or config_default("published_dir"))
    if problem:
        raise ConfigError(problem)
    problem = logger_problem(cfg.get("logger"))
    if problem:
        raise ConfigError(problem)
    _check(cfg["concurrent_runs"] >= 1, "concurrent_runs", f"must be an integer >= 1, got {cfg['concurrent_runs']}")
    SCHEMA["gpu"].check("gpu", cfg["gpu"], "gpu.")
    _check(cfg["gpu"]["jobs_per_gpu"] >= 1, "gpu.jobs_per_gpu",
           f"must be an integer >= 1 (1: every job has a GPU of its own), got {cfg['gpu']['jobs_per_gpu']}")


def make_task(task_cfg: dict) -> Task:
    _check("name" in task_cfg, "task.name", "missing")
    _check_type("task.name", task_cfg["name"], str)
    options = {k: v for k, v in task_cfg.items() if k != "name"}
    try:
        hints = F.hints(tasks.task_class(task_cfg["name"]).__init__)
        for key, value in options.items():
            if key in hints:
                _check_type(f"task.{key}", value, hints[key])
        return tasks.build(task_cfg["name"], **options)
    except (tasks.UnknownTaskError, TaskConfigError) as err:
        raise ConfigError(str(err)) from None


def make_train_config(train_cfg: dict) -> TrainConfig:
    SCHEMA["train"].check("train", train_cfg, "train.")
    tc = TrainConfig(**train_cfg)
    _check_name("train.profile", tc.profile)  # it names the report's folder
    _check(tc.steps >= 1, "train.steps", f"must be an integer >= 1, got {tc.steps!r}")
    _check(tc.batch_size >= 1, "train.batch_size", f"must be an integer >= 1, got {tc.batch_size!r}")
    _check(tc.lr > 0, "train.lr", f"must be > 0, got {tc.lr}")
    _check(tc.weight_decay >= 0, "train.weight_decay", f"must be >= 0, got {tc.weight_decay}")
    _check(tc.schedule in SCHEDULES, "train.schedule", f"must be one of {', '.join(SCHEDULES)}, got {tc.schedule!r}")
    _check(tc.weight_decay_exempt in EXEMPTION_RULES, "train.weight_decay_exempt",
           f"must be one of {', '.join(EXEMPTION_RULES)}, got {tc.weight_decay_exempt!r}")
    _check(all(0 <= b < 1 for b in tc.betas), "train.betas", f"must be two numbers in [0, 1), got {tc.betas}")
    _check(0 <= tc.warmup_steps <= tc.steps, "train.warmup_steps", f"must be in [0, train.steps={tc.steps}], got {tc.warmup_steps}")
    _check(0 <= tc.min_lr_ratio <= 1, "train.min_lr_ratio", f"must be in [0, 1], got {tc.min_lr_ratio}")
    _check(tc.grad_clip >= 0, "train.grad_clip", f"must be >= 0 (0 disables clipping), got {tc.grad_clip}")
    _check(tc.eval_every >= 1, "train.eval_every", f"must be an integer >= 1, got {tc.eval_every!r}")
    _check(tc.eval_batch_size >= 1, "train.eval_batch_size", f"must be an integer >= 1, got {tc.eval_batch_size}")
    _check(tc.precision in PRECISIONS, "train.precision", f"must be one of {', '.join(PRECISIONS)}, got {tc.precision!r}")
    _check(tc.threads is None or tc.threads >= 1, "train.threads", f"must be null or an integer >= 1, got {tc.threads}")
    _check(tc.compile in COMPILE_MODES, "train.compile", f"must be one of {', '.join(COMPILE_MODES)}, got {tc.compile!r}")
    _check(tc.head_positions in HEAD_POSITIONS, "train.head_positions",
           f"must be one of {', '.join(HEAD_POSITIONS)}, got {tc.head_positions!r}")
    return tc


def check_model_fields(model_cfg: dict) -> None:
    SCHEMA["model"].check("model", model_cfg, "model.")
    d_model, n_layers, ratio = model_cfg["d_model"], model_cfg["n_layers"], model_cfg["mlp_ratio"]
    _check(d_model >= 1, "model.d_model", f"must be an integer >= 1, got {d_model!r}")
    _check(n_layers >= 1, "model.n_layers", f"must be an integer >= 1, got {n_layers!r}")
    _check(ratio == 0 or (ratio > 0 and int(ratio * d_model) >= 1), "model.mlp_ratio",
           f"must be 0 (no MLP) or > 0 and leave the MLP at least one hidden unit (mlp_ratio * d_model >= 1), got {ratio!r}")
    _check(model_cfg["norm"] in NORMS, "model.norm", f"must be one of {', '.join(NORMS)}, got {model_cfg['norm']!r}")
    _check(model_cfg["max_len"] is None or model_cfg["max_len"] >= 1, "model.max_len",
           f"must be null (fit the task) or an integer >= 1, got {model_cfg['max_len']!r}")
    _check(model_cfg.get("position", "none") in POSITIONS, "model.position",
           f"must be one of {', '.join(POSITIONS)}, got {model_cfg.get('position')!r}")
    _check(model_cfg.get("init", "reference") in INITS, "model.init",
           f"must be one of {', '.join(INITS)}, got {model_cfg.get('init')!r}")
    _check(model_cfg.get("short_conv", 0) >= 0, "model.short_conv",
           f"must be 0 (off) or a kernel size >= 1, got {model_cfg.get('short_conv')!r}")
    _check(model_cfg.get("order", "mixer_first") in ORDERS, "model.order",
           f"must be one of {', '.join(ORDERS)}, got {model_cfg.get('order')!r}")
    _check(model_cfg.get("mlp_activation", "gelu") in ACTIVATIONS, "model.mlp_activation",
           f"must be one of {', '.join(ACTIVATIONS)}, got {model_cfg.get('mlp_activation')!r}")
    _check(model_cfg.get("channel_mixer", "mlp") in CHANNEL_MIXERS, "model.channel_mixer",
           f"must be one of {', '.join(CHANNEL_MIXERS)}, got {model_cfg.get('channel_mixer')!r}")
    _check(model_cfg.get("swiglu_multiple_of", 16) >= 1, "model.swiglu_multiple_of",
           f"must be an integer >= 1, got {model_cfg.get('swiglu_multiple_of')!r}")
    _check(ratio > 0 or model_cfg.get("match_params") is None or model_cfg.get("match_by", "d_model+mlp") == "d_model",
           "model.match_by", f"{model_cfg.get('match_by', 'd_model+mlp')!r} moves the MLP's width, but mlp_ratio is 0 "
           "(no MLP); use match_by=d_model")


def check_mixer_fields(mixer_cfg: dict, field: str = "mixer") -> None:
    """The mixer's name and its options' names and types (ranges are the mixer's own to check);
    ``field`` names the group in messages (``model.stack[2]`` for a layer of a stack)."""
    _check(isinstance(mixer_cfg, dict), field, f"must be a mapping of a mixer's options, got {mixer_cfg!r}")
    _check("name" in mixer_cfg, f"{field}.name", "missing")
    name = mixer_cfg["name"]
    _check_type(f"{field}.name", name, str)
    try:
        valid = mixers.options_of(name)
    except mixers.UnknownMixerError as err:
        raise ConfigError(f"{field}.name: {err}") from None
    options = {k: v for k, v in mixer_cfg.items() if k != "name"}
    unknown = sorted(set(options) - set(valid))
    _check(not unknown, field, f"{name} has no option(s) {unknown}; valid options: {', '.join(valid)}")
    hints = F.hints(mixers.mixer_class(name).__init__)
    for key, value in options.items():
        if key in hints:
            _check_type(f"{field}.{key}", value, hints[key])
        if key in POSITIVE_MIXER_OPTIONS and isinstance(value, int) and not isinstance(value, bool):
            _check(value >= 1, f"{field}.{key}", f"must be an integer >= 1, got {value}")


def check_stack(model_cfg: dict, mixer_cfg: dict) -> None:
    """An expanded ``model.stack`` (``harness.run.stack``): one layer per ``n_layers``, each a mixer's
    options, at least one of them the ``mixer`` group's (whose options would otherwise be ignored)."""
    stack = model_cfg.get("stack")
    if stack is None:
        return
    n_layers = model_cfg["n_layers"]
    _check(len(stack) == n_layers, "model.stack",
           f"has {len(stack)} layers ({stacks.display_name(stack)}) but model.n_layers is {n_layers}; "
           f"give one entry per layer")
    for i, layer in enumerate(stack):
        _check(isinstance(layer, dict), f"model.stack[{i}]",
               f"{layer!r} is not expanded to its options (configs pass through harness.run.config.to_dict, "
               "which expands the stack)")
        check_mixer_fields(layer, f"model.stack[{i}]")
    _check(any(layer == mixer_cfg for layer in stack), "model.stack",
           f"has no layer of the mixer group ({mixer_cfg.get('name')}, with its options), whose options would "
           f"be ignored; write {stacks.MIXER_ENTRY!r} for the layers that run it "
           f"(mixer=gla model.stack=[{stacks.MIXER_ENTRY},{stacks.MIXER_ENTRY},attention])")


def validate(cfg: dict, check_device: bool = True) -> tuple[Task, TrainConfig]:
    """Check every field of a resolved run config; return its task and training config.

    ``check_device=False`` skips whether CUDA is visible here (a Slurm login node plans GPU runs).
    Raises ``ConfigError`` naming the field. The mixer's own range checks run in ``make_model``.
    """
    check_top_level(cfg)
    device = resolve_device(cfg["device"]) if check_device else None
    task = make_task(cfg["task"])
    train_cfg = make_train_config(cfg["train"])
    # bf16 is CUDA autocast (harness.run.train.autocast_context): elsewhere the run would be fp32 under a bf16 label
    _check(device is None or device.type == "cuda" or train_cfg.precision != "bf16", "train.precision",
           f"bf16 runs as CUDA autocast, but this run's device is {device} (device={cfg['device']}); "
           "set train.precision=fp32 (or run on a GPU)")
    _check(device is None or device.type == "cuda" or train_cfg.compile != "cuda_graph", "train.compile",
           f"cuda_graph captures CUDA kernels, but this run's device is {device} (device={cfg['device']}); "
           "set train.compile=compile or none (or run on a GPU)")
    check_model_fields(cfg["model"])
    check_mixer_fields(cfg["mixer"])
    check_stack(cfg["model"], cfg["mixer"])
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
    Trusts ``validate``: the fields' names and types are not checked again here (check once, build once).

    Also computes the model's FLOPs for the task's longest input and checks per-parameter optimiser
    overrides (``param._optim``), so that options a mixer accepts but cannot use fail here too.
    """
    name = mixer_cfg["name"]
    options = as_annotated(name, {k: v for k, v in mixer_cfg.items() if k != "name"})
    stack = model_cfg.get("stack")
    if stack is not None:  # a hybrid: every layer's options, annotated as its mixer's; messages name the stack
        stack = [{"name": layer["name"], **as_annotated(layer["name"], {k: v for k, v in layer.items() if k != "name"})}
                 for layer in stack]
        name = stacks.display_name(stack)
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
                             mlp_hidden=hidden, train_len=task.max_train_input_len(),
                             position=model_cfg.get("position", "none"), init=model_cfg.get("init", "reference"),
                             short_conv=model_cfg.get("short_conv", 0), order=model_cfg.get("order", "mixer_first"),
                             mlp_activation=model_cfg.get("mlp_activation", "gelu"),
                             final_norm=model_cfg.get("final_norm", True), readout=task.readout, stack=stack,
                             channel_mixer=model_cfg.get("channel_mixer", "mlp"),
                             swiglu_multiple_of=model_cfg.get("swiglu_multiple_of", 16))

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
        if stack is not None:  # the layers' options are in model.stack
            raise ConfigError(f"mixer ({name}): {err} (with d_model={d_model}; the layers' options in model.stack)") from None
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
        raise ConfigError(f"mixer ({model.mixer_name}): builds but cannot run a forward pass "
                          f"({type(err).__name__}: {first_line}) with {options}") from None
    finally:
        model.train(was_training)
