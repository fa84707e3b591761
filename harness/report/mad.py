"""The MAD benchmark's report (Poli et al. 2024; mad-lab's analysis.py): every run of ``mad_benchmark``,
whatever its task, and the runs of MAD's four tasks in any other benchmark.

MAD's score, as ``compute_model_mad_scores`` computes it: for each model, task and task setting
(difficulty), the best final test accuracy over the learning-rate x weight-decay grid (mean over
seeds when there are several); a task's score is the mean of those over the task's settings; the
MAD score is the mean over tasks. MAD's tasks here: ``compression``, ``memorization``,
``noisy_recall``, ``fuzzy_recall``, ``in_context_recall`` (noisy_recall without noise ids: MAD's
plain in-context recall) and ``selective_copy``. A model is the mixer with any other backbone
setting that varies (``d_model``, ...).

- ``settings``: one row per (task, setting), one column per model: the best accuracy and where it
  was reached (``lr``, ``wd``);
- ``scores``: one row per model: each task's score, how many settings it has, the MAD score (over
  the tasks the model has every setting of; a model missing some is marked ``incomplete``);
- ``grid``: every (model, task, setting, learning rate, weight decay) with its accuracy;
- ``scores`` figure: grouped bars, a group per task and one for the MAD score, a bar per model;
- ``settings`` figure: a panel per task, the best accuracy per setting, a line per model.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pandas as pd

from harness.report.kit import (BAR_HATCHES, LINESTYLES, flatten, hardware_label, legend_below, new_figure,
                                percent_mean_std, save_figure, series_styles, settings_label, sort_key, status_note,
                                varying_keys, write_table)

BENCHMARKS = ("mad_benchmark",)  # every run of these benchmarks comes here, whatever its task
TASKS = ("compression", "memorization", "noisy_recall", "fuzzy_recall")  # and these tasks' runs anywhere
ORDER = ("compression", "memorization", "in_context_recall", "noisy_recall", "fuzzy_recall", "selective_copy")
GRID = ("train.lr", "train.weight_decay")
# task options that are not a difficulty: the evaluation set's size and seed, the data seeds
NOT_DIFFICULTY = ("name", "eval_samples", "eval_seed", "train_seed", "map_seed", "eval_lengths")
# keys that follow from others or from the grid: not part of what a model is
DERIVED = ("train.steps", "train.eval_every", *GRID)


def mad_task(record: dict) -> str:
    """MAD's name for the task a run trained on: noisy_recall without noise ids is MAD's in-context recall."""
    task = record["config"]["task"]
    if task["name"] == "noisy_recall" and task.get("noise_vocab_size") == 0:
        return "in_context_recall"
    return task["name"]


def setting(record: dict) -> tuple:
    """The run's difficulty: its task options other than evaluation and seeds, as sorted ``(key, value)``."""
    task = record["config"]["task"]
    return tuple(sorted((k, v) for k, v in task.items() if k not in NOT_DIFFICULTY))


def ordered(items: tuple) -> tuple:
    """A sort key for settings: numbers by value, anything else by its text."""
    return tuple((k, (0, v, "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0, repr(v)))
                 for k, v in items)


def setting_label(items: tuple, shown: set[str]) -> str:
    """``seq_len=256, vocab_size=16`` for the keys in ``shown`` (those that vary within the task)."""
    return ", ".join(f"{k}={v}" for k, v in items if k in shown) or "baseline"


def accuracy(record: dict) -> float:
    """The final accuracy on the run's evaluation sets (mean over them; MAD's tasks have one, ``test``)."""
    return record["final"]["accuracy_all"]


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def model_extra(records: list[dict]) -> list[str]:
    """Varying config keys that tell models apart (not the task's, not the grid's, not derived ones)."""
    return [k for k in varying_keys(records) if not k.startswith("task.") and k not in DERIVED]


def model_name(record: dict, extra: list[str]) -> str:
    flat = flatten(record["config"])
    return settings_label(record["config"]["mixer"]["name"], extra, [flat.get(k) for k in extra])


def cells(records: list[dict]) -> tuple[list[str], dict[tuple, dict[tuple, list[dict]]]]:
    """``(model, task, setting) -> {(lr, wd): runs}`` and the model names in order."""
    extra = model_extra(records)
    out: dict[tuple, dict[tuple, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        point = (r["config"]["train"]["lr"], r["config"]["train"]["weight_decay"])
        out[(model_name(r, extra), mad_task(r), setting(r))][point].append(r)
    return sorted({key[0] for key in out}), out


def best(by_point: dict[tuple, list[dict]]) -> tuple[tuple | None, list[dict]]:
    """The grid point with the highest mean (over seeds) accuracy among finished runs, and its runs."""
    done = {p: [r for r in runs if r["status"] == "ok"] for p, runs in by_point.items()}
    done = {p: ok for p, ok in done.items() if ok}
    if not done:
        return None, []
    point = max(done, key=lambda p: mean([accuracy(r) for r in done[p]]))
    return point, done[point]


def task_order(tasks: set[str]) -> list[str]:
    return [t for t in ORDER if t in tasks] + sorted(tasks - set(ORDER))


def shown_keys(keys: list[tuple]) -> dict[str, set[str]]:
    """Per task, the setting keys whose values differ between its settings (what labels show)."""
    values: dict[str, dict[str, set]] = defaultdict(lambda: defaultdict(set))
    for _, task, items in keys:
        for k, v in items:
            values[task][k].add(repr(v))
    return {task: {k for k, vs in by_key.items() if len(vs) > 1} for task, by_key in values.items()}


def best_table(records: list[dict]) -> tuple[list[str], dict[tuple, tuple[tuple | None, list[dict]]]]:
    models, grid = cells(records)
    return models, {key: best(by_point) for key, by_point in grid.items()}


def scores(records: list[dict]) -> tuple[pd.DataFrame, dict[str, dict[str, float]]]:
    """The ``scores`` table and ``{model: {task: score, "MAD score": ...}}`` (complete tasks only)."""
    models, found = best_table(records)
    settings_of: dict[str, set] = defaultdict(set)
    for _, task, items in found:
        settings_of[task].add(items)
    tasks = task_order(set(settings_of))
    rows, values = [], {}
    for model in models:
        row, values[model] = {"model": model}, {}
        complete = []
        for task in tasks:
            accs = [mean([accuracy(r) for r in runs]) for (m, t, _), (_, runs) in found.items()
                    if m == model and t == task and runs]
            total = len(settings_of[task])
            if accs:
                values[model][task] = mean(accs)
                row[f"{task} (%)"] = f"{100 * mean(accs):.1f}" + ("" if len(accs) == total else f" ({len(accs)}/{total})")
            else:
                row[f"{task} (%)"] = "-"
            if len(accs) == total:
                complete.append(task)
        if complete:
            values[model]["MAD score"] = mean([values[model][t] for t in complete])
        note = "" if len(complete) == len(tasks) else f" incomplete: {len(complete)}/{len(tasks)} tasks"
        row["MAD score (%)"] = (f"{100 * values[model]['MAD score']:.1f}" if complete else "-") + note
        rows.append(row)
    return pd.DataFrame(rows), values


def settings_table(records: list[dict]) -> pd.DataFrame:
    models, found = best_table(records)
    shown = shown_keys(list(found))
    rows = []
    order = task_order({t for _, t, _ in found})
    for task, items in sorted({(t, s) for _, t, s in found}, key=lambda ts: (order.index(ts[0]), ordered(ts[1]))):
        row = {"task": task, "setting": setting_label(items, shown.get(task, set()))}
        for model in models:
            point, runs = found.get((model, task, items), (None, []))
            if point is None:
                row[model] = "-"
            else:
                row[model] = f"{percent_mean_std([accuracy(r) for r in runs])} (lr {point[0]:g}, wd {point[1]:g})"
        rows.append(row)
    return pd.DataFrame(rows)


def grid_table(records: list[dict]) -> pd.DataFrame:
    models, grid = cells(records)
    shown = shown_keys(list(grid))
    rows = []
    for (model, task, items), by_point in sorted(grid.items(), key=lambda kv: repr(kv[0])):
        point, _ = best(by_point)
        for p, runs in sorted(by_point.items()):
            done = [r for r in runs if r["status"] == "ok"]
            rows.append({"model": model, "task": task, "setting": setting_label(items, shown.get(task, set())),
                         "lr": p[0], "weight decay": p[1], "accuracy (%)": percent_mean_std([accuracy(r) for r in done]),
                         "best": "yes" if p == point else "", "runs": status_note(runs)})
    return pd.DataFrame(rows)


def plot_scores(values: dict[str, dict[str, float]], out_dir: Path, title: str) -> list[Path]:
    """Grouped bars in %: a group per task and one for the MAD score, a bar per model in its style:
    the kit's colour, and a hatch for its line style (``BAR_HATCHES``), so that mixers sharing a colour
    (the palette has 7) stay apart."""
    models = sorted(values, key=sort_key)
    groups = task_order({t for v in values.values() for t in v if t != "MAD score"}) + ["MAD score"]
    styles = series_styles(models)
    fig, axes = new_figure("scores")
    ax = axes[0][0]
    bar = 0.8 / max(1, len(models))
    for i, model in enumerate(models):
        xs = [g + (i - (len(models) - 1) / 2) * bar for g in range(len(groups))]
        ys = [100 * values[model].get(group, float("nan")) for group in groups]
        hatch = BAR_HATCHES[LINESTYLES.index(styles[model]["linestyle"]) % len(BAR_HATCHES)]
        ax.bar(xs, ys, width=bar, color=styles[model]["color"], label=model, linewidth=0, hatch=hatch,
               edgecolor="white")
    ax.set_xticks(range(len(groups)), [g.replace("_", " ") for g in groups])
    ax.set_ylim(0, 102)
    ax.set_ylabel("test accuracy (%)")
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title)
    fig.tight_layout()
    legend_below(fig, title="best of the lr x weight-decay grid, mean over a task's settings")
    return save_figure(fig, out_dir, "scores")


def plot_settings(records: list[dict], out_dir: Path, title: str) -> list[Path]:
    """A panel per task (three to a row): the best accuracy (%) at each setting (in the table's order),
    a line per model in its style."""
    models, found = best_table(records)
    shown = shown_keys(list(found))
    tasks = task_order({t for _, t, _ in found})
    styles = series_styles(models)
    columns = min(3, len(tasks)) or 1
    rows = -(-len(tasks) // columns) or 1
    fig, axes = new_figure("settings", rows, columns, sharey=True)
    for ax in axes.flat[len(tasks):]:
        ax.axis("off")
    for ax, task in zip(axes.flat, tasks):
        items = sorted({s for _, t, s in found if t == task}, key=ordered)
        for model in models:
            ys = [100 * mean([accuracy(r) for r in found[(model, task, s)][1]]) if found.get((model, task, s), (0, []))[1]
                  else float("nan") for s in items]
            ax.plot(range(len(items)), ys, label=model, **styles[model])
        ax.set_xticks(range(len(items)), [setting_label(s, shown.get(task, set())) for s in items])
        ax.set_xlim(-0.3, len(items) - 0.7)
        ax.set_ylim(-2, 102)
        ax.set_title(task.replace("_", " "))
        ax.grid(alpha=0.3)
    for row in axes:
        row[0].set_ylabel("test accuracy (%)")
    fig.suptitle(title)
    fig.tight_layout()
    legend_below(fig, title="best of the lr x weight-decay grid at each setting")
    return save_figure(fig, out_dir, "settings")


def report(records: list[dict], benchmark: str, profile: str, out_dir: Path) -> list[Path]:
    hardware = hardware_label(records[0].get("environment", {}))
    header = (f"# {benchmark}: MAD's synthetic tasks (Poli et al. 2024) ({profile} profile)\n\n"
              f"Hardware {hardware}. Each cell: the best final test accuracy over the learning-rate x weight-decay "
              f"grid (mean ± std over seeds); a task's score is the mean over its settings, the MAD score the "
              f"mean over tasks (mad-lab's compute_model_mad_scores). in_context_recall is noisy_recall without "
              f"noise (MAD's in-context recall).")
    table, values = scores(records)
    written = write_table(table, out_dir, "scores", header)
    written += write_table(settings_table(records), out_dir, "settings", header)
    written += write_table(grid_table(records), out_dir, "grid", header + "\n\nEvery point of the grid.")
    if any(r["status"] == "ok" for r in records):
        title = f"{benchmark}: MAD's synthetic tasks, {hardware}"
        written += plot_scores({m: v for m, v in values.items() if v}, out_dir, title)
        written += plot_settings(records, out_dir, title)
    return written
