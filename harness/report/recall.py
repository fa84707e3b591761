"""The recall benchmark's report (MQAR, Zoology's protocol): tables and Zoology's figure.

Zoology reports each model (mixer, width) at its best learning rate: of the learning rates swept,
the one whose final accuracy averaged over the whole test grid (and over seeds) is highest.

- ``table``: one row per (mixer, d_model) at its best learning rate: parameters, accuracy per test
  setting (mean ± std over seeds), mean accuracy, the learning rates tried;
- ``lr_sweep``: every (mixer, d_model, learning rate) with its mean accuracy;
- ``accuracy_vs_d_model``: Zoology's figure, accuracy against model dimension, one panel per
  sequence length, one line per mixer (line style per number of key-value pairs when a length
  has several).
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from harness.report.kit import hardware_label, percent_mean_std, mixer_colors, status_note, flatten, save_figure, varying_keys, write_table

TASKS = ("mqar",)  # the tasks whose runs this module reports

SWEPT = ("model.d_model", "train.lr")


def parse_setting(name: str) -> tuple[int, int]:
    """``(seq_len, num_kv_pairs)`` of an MQAR evaluation set's name in a record, ``L<seq_len>-kv<pairs>``."""
    length, kv = name.removeprefix("L").split("-kv")
    return int(length), int(kv)


def width(record: dict) -> int:
    """The run's d_model (the matched one when parameter matching chose it)."""
    return (record.get("matching") or {}).get("d_model") or record["config"]["model"]["d_model"]


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def model_groups(records: list[dict]) -> tuple[list[str], dict[tuple, dict[float, list[dict]]]]:
    """``(mixer, d_model, other varying settings) -> {lr: runs}`` and the names of those other settings."""
    extra = [k for k in varying_keys(records) if k not in SWEPT]
    groups: dict[tuple, dict[float, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        flat = flatten(r["config"])
        key = (r["config"]["mixer"]["name"], width(r), *(flat.get(k) for k in extra))
        groups[key][r["config"]["train"]["lr"]].append(r)
    return extra, groups


def best_lr(by_lr: dict[float, list[dict]]) -> tuple[float | None, list[dict]]:
    """The learning rate with the highest mean (over seeds) test-grid accuracy, and its finished runs."""
    scored = {lr: [r for r in runs if r["status"] == "ok"] for lr, runs in by_lr.items()}
    scored = {lr: ok for lr, ok in scored.items() if ok}
    if not scored:
        return None, []
    lr = max(scored, key=lambda k: mean([r["final"]["accuracy_all"] for r in scored[k]]))
    return lr, scored[lr]


def tables(records: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    extra, groups = model_groups(records)
    rows, sweep = [], []
    for key, by_lr in sorted(groups.items(), key=lambda kv: repr(kv[0])):
        mixer, d_model = key[0], key[1]
        lr, ok = best_lr(by_lr)
        every = [r for runs in by_lr.values() for r in runs]
        first = (ok or every)[0]
        row = {"mixer": mixer, **dict(zip(extra, key[2:])), "d_model": d_model,
               "params": first.get("params", {}).get("total"), "mixer params": first.get("params", {}).get("mixer"),
               "best lr": lr if lr is not None else "-", "runs": status_note(every)}
        sets = list(ok[0]["final"]["eval"]) if ok else []
        for name in sets:
            row[f"acc {name} (%)"] = percent_mean_std([r["final"]["eval"][name]["accuracy"] for r in ok])
        row["mean acc (%)"] = percent_mean_std([r["final"]["accuracy_all"] for r in ok])
        row["lrs tried"] = ", ".join(f"{k:g}" for k in sorted(by_lr))
        rows.append(row)
        for each, runs in sorted(by_lr.items()):
            done = [r for r in runs if r["status"] == "ok"]
            sweep.append({"mixer": mixer, **dict(zip(extra, key[2:])), "d_model": d_model, "lr": each,
                          "mean acc (%)": percent_mean_std([r["final"]["accuracy_all"] for r in done]),
                          "best": "yes" if each == lr else "", "runs": status_note(runs)})
    return pd.DataFrame(rows), pd.DataFrame(sweep)


def plot_accuracy_vs_d_model(records: list[dict], out_dir: Path, title: str) -> list[Path]:
    """Zoology's figure: best-learning-rate accuracy against d_model, a panel per sequence length."""
    extra, groups = model_groups(records)
    best = {key: best_lr(by_lr)[1] for key, by_lr in groups.items()}
    best = {key: runs for key, runs in best.items() if runs}
    sets = sorted({s for runs in best.values() for s in runs[0]["final"]["eval"]}, key=parse_setting)
    lengths = sorted({parse_setting(s)[0] for s in sets})
    lines = sorted({(key[0], *key[2:]) for key in best})
    colors = mixer_colors([" ".join(map(str, line)) for line in lines])
    styles = ["-", "--", ":", "-."]
    widths = sorted({key[1] for key in best})
    fig, axes = plt.subplots(1, max(1, len(lengths)), figsize=(3.6 * max(1, len(lengths)), 3.6), squeeze=False,
                             sharey=True)
    for ax, length in zip(axes[0], lengths):
        kvs = [parse_setting(s)[1] for s in sets if parse_setting(s)[0] == length]
        for i, kv in enumerate(kvs):
            name = f"L{length}-kv{kv}"
            for line in lines:
                points = sorted((key[1], runs) for key, runs in best.items() if (key[0], *key[2:]) == line
                                and name in runs[0]["final"]["eval"])
                if not points:
                    continue
                xs = [d for d, _ in points]
                ys = [mean([r["final"]["eval"][name]["accuracy"] for r in runs]) for _, runs in points]
                key = " ".join(map(str, line))
                ax.plot(xs, ys, marker="o", linestyle=styles[i % len(styles)], color=colors[key], label=key)
        ax.set_xscale("log", base=2)
        ax.set_xticks(widths, [str(d) for d in widths])
        ax.minorticks_off()
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("model dimension")
        style_names = ("solid", "dashed", "dotted", "dash-dot")
        note = ", ".join(f"{style_names[i % len(styles)]} {kv}" for i, kv in enumerate(kvs)) if len(kvs) > 1 else str(kvs[0])
        ax.set_title(f"sequence length {length}\n(key-value pairs: {note})", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("MQAR accuracy (best learning rate)")
    handles, labels = {}, []
    for ax in axes[0]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    fig.legend([handles[lab] for lab in labels], labels, fontsize=8, loc="lower center", ncol=min(6, max(1, len(labels))))
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return save_figure(fig, out_dir, "accuracy_vs_d_model")


def describe(records: list[dict]) -> str:
    r = records[0]
    task, train, model = r["task_summary"], r["config"]["train"], r["config"]["model"]
    settings = ", ".join(f"({L}, {kv})" for L, kv in task["train_settings"])
    lrs = sorted({x["config"]["train"]["lr"] for x in records})
    return (f"Hardware: {hardware_label(r['environment'])}; precision {train['precision']}. "
            f"MQAR as Zoology generates it: vocabulary {task['vocab_size']}, trained on (seq_len, kv pairs) "
            f"{settings} with weights {task['train_weights']} (one setting per batch), tested on "
            f"{len(task['test_settings'])} settings. Backbone: {model['n_layers']} layers, MLP x{model['mlp_ratio']}. "
            f"Training: {train['steps']} steps x batch {train['batch_size']}, AdamW, warmup {train['warmup_steps']}, "
            f"cosine to {train['min_lr_ratio']}x; learning rates {', '.join(f'{x:g}' for x in lrs)}, each model "
            f"reported at the one with the best mean test accuracy (Zoology's selection). Accuracy: fraction of "
            f"queries answered, mean ± std over seeds.")


def report(records: list[dict], benchmark: str, profile: str, out_dir: Path) -> list[Path]:
    header = f"# {benchmark} ({profile} profile)\n\n{describe(records)}"
    table, sweep = tables(records)
    written = write_table(table, out_dir, "table", header)
    written += write_table(sweep, out_dir, "lr_sweep", header + "\n\nEvery learning rate of the sweep.")
    if any(r["status"] == "ok" for r in records):
        written += plot_accuracy_vs_d_model(records, out_dir, f"{benchmark}, {hardware_label(records[0]['environment'])}")
    return written
