"""The in-context learning benchmark's report.

Regression (Garg et al. 2022):

- ``regression_table``: per mixer the squared error / d at a few numbers of in-context examples
  (mean ± std over seeds), its mean over the prompt, and least squares and the zero predictor on
  the same prompts;
- ``regression_error_vs_examples``: Garg et al.'s figure, squared error / d against the number of
  in-context examples, one line per mixer, least squares and the zero predictor dashed.

Language (Akyürek et al. 2024):

- ``language_table``: per mixer accuracy (argmax allowed by the automaton) and total-variation
  distance to the automaton's next-symbol distribution;
- ``language_learning_curves``: both against training FLOPs.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.ticker import MaxNLocator

from harness.report.kit import hardware_label, mean, mean_std, mixer_colors, status_note, flatten, save_figure, varying_keys, write_table

TASKS = ("icl_regression", "icl_language")  # the tasks whose runs this module reports


def groups(records: list[dict]) -> tuple[list[str], dict[tuple, list[dict]]]:
    """``(mixer, other varying settings) -> runs`` (seeds together)."""
    extra = [k for k in varying_keys(records) if k != "task.name"]
    out: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        flat = flatten(r["config"])
        out[(r["config"]["mixer"]["name"], *(flat.get(k) for k in extra))].append(r)
    return extra, dict(sorted(out.items(), key=lambda kv: repr(kv[0])))


def label(key: tuple, extra: list[str]) -> str:
    return key[0] + "".join(f", {k.split('.')[-1]}={v}" for k, v in zip(extra, key[1:]))


def curve(run: dict, prefix: str, n_points: int) -> list[float]:
    return [run["final"]["eval"]["prompts"][f"{prefix}_k{k}"] for k in range(n_points)]


def regression_report(records: list[dict], header: str, title: str, out_dir: Path) -> list[Path]:
    extra, by_key = groups(records)
    ok_all = [r for r in records if r["status"] == "ok"]
    n_points, d = records[0]["task_summary"]["n_points"], records[0]["task_summary"]["n_dims"]
    marks = sorted({k for k in (0, d // 2, d - 1, d, 2 * d, n_points - 1) if 0 <= k < n_points})
    rows = []
    for key, runs in by_key.items():
        ok = [r for r in runs if r["status"] == "ok"]
        first = (ok or runs)[0]
        row = {"mixer": key[0], **dict(zip(extra, key[1:])), "params": first.get("params", {}).get("total"),
               "runs": status_note(runs)}
        for k in marks:
            row[f"err/d k={k}"] = mean_std([curve(r, "err", n_points)[k] for r in ok])
        row["err/d mean over k"] = mean_std([r["final"]["eval"]["prompts"]["error"] for r in ok])
        rows.append(row)
    if ok_all:  # the baselines are the same for every run: the prompts are the same
        for name, prefix in (("least squares", "lsq"), ("zero predictor", "zero")):
            values = curve(ok_all[0], prefix, n_points)
            rows.append({"mixer": f"({name})", **{f"err/d k={k}": f"{values[k]:.3f}" for k in marks},
                         "err/d mean over k": f"{mean(values):.3f}"})
    written = write_table(pd.DataFrame(rows), out_dir, "regression_table", header)
    if not ok_all:
        return written
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    colors = mixer_colors([label(key, extra) for key in by_key])
    ks = list(range(n_points))
    for key, runs in by_key.items():
        ok = [r for r in runs if r["status"] == "ok"]
        if not ok:
            continue
        curves = [curve(r, "err", n_points) for r in ok]
        ys = [mean([c[k] for c in curves]) for k in ks]
        ax.plot(ks, ys, marker="o", markersize=3, color=colors[label(key, extra)], label=f"{label(key, extra)} ({len(ok)} seeds)")
        if len(ok) > 1:
            ax.fill_between(ks, [min(c[k] for c in curves) for k in ks], [max(c[k] for c in curves) for k in ks],
                            color=colors[label(key, extra)], alpha=0.2)
    ax.plot(ks, curve(ok_all[0], "lsq", n_points), "k--", label="least squares")
    ax.plot(ks, curve(ok_all[0], "zero", n_points), ":", color="0.4", label="zero predictor")
    ax.axvline(d, color="0.85", zorder=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("in-context examples")
    ax.set_ylabel("squared error / d")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    return written + save_figure(fig, out_dir, "regression_error_vs_examples")


def language_report(records: list[dict], header: str, title: str, out_dir: Path) -> list[Path]:
    extra, by_key = groups(records)
    rows = []
    for key, runs in by_key.items():
        ok = [r for r in runs if r["status"] == "ok"]
        first = (ok or runs)[0]
        rows.append({"mixer": key[0], **dict(zip(extra, key[1:])), "params": first.get("params", {}).get("total"),
                     "runs": status_note(runs),
                     "accuracy (%)": mean_std([r["final"]["eval"]["test"]["accuracy"] for r in ok], 1, 100),
                     "TVD": mean_std([r["final"]["eval"]["test"]["tvd"] for r in ok]),
                     "eval loss": mean_std([r["final"]["eval"]["test"]["loss"] for r in ok])})
    written = write_table(pd.DataFrame(rows), out_dir, "language_table", header)
    if not any(r["status"] == "ok" for r in records):
        return written
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    colors = mixer_colors([label(key, extra) for key in by_key])
    for key, runs in by_key.items():
        labelled = False
        for r in (r for r in runs if r["status"] == "ok"):
            xs = [p["train_flops"] for p in r["curve"]]
            for ax, metric in zip(axes, ("accuracy", "tvd")):
                ax.plot(xs, [p["eval"]["test"][metric] for p in r["curve"]], color=colors[label(key, extra)],
                        label=None if labelled else label(key, extra))
            labelled = True
    for ax, name in zip(axes, ("accuracy (next symbol allowed)", "total-variation distance")):
        ax.set_xscale("log")
        ax.set_xlabel("training FLOPs (analytic, forward + backward)")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylim(0, 1.02)
    axes[1].set_ylim(bottom=0)
    axes[1].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    return written + save_figure(fig, out_dir, "language_learning_curves")


def describe(records: list[dict]) -> str:
    r = records[0]
    train, model = r["config"]["train"], r["config"]["model"]
    task = r["task_summary"]
    if r["config"]["task"]["name"] == "icl_regression":
        what = (f"In-context linear regression (Garg et al. 2022): d = {task['n_dims']}, {task['n_points']} examples per "
                f"prompt, noise std {task['noise_std']}; squared error / d on the same evaluation prompts for every "
                f"model, least squares (minimum norm below d examples) and the zero predictor on the same prompts.")
    else:
        what = (f"In-context language learning (Akyürek et al. 2024): a random automaton per sequence with "
                f"{task['states'][0]}-{task['states'][1]} states and {task['alphabet'][0]}-{task['alphabet'][1]} of "
                f"{task['num_symbols']} symbols, {task['strings'][0]}-{task['strings'][1]} strings of length "
                f"1-{task['max_string_len']}, cut to {task['max_len']} tokens; accuracy = argmax allowed by the "
                f"automaton, TVD to its next-symbol distribution.")
    return (f"Hardware: {hardware_label(r['environment'])}; precision {train['precision']}. {what} Backbone: "
            f"d_model {model['d_model']}, {model['n_layers']} layers. Training: {train['steps']} steps x batch "
            f"{train['batch_size']}, AdamW lr {train['lr']}, same for every mixer; mean ± std over seeds.")


def report(records: list[dict], benchmark: str, profile: str, out_dir: Path) -> list[Path]:
    written = []
    title = f"{benchmark}, {hardware_label(records[0]['environment'])}"
    for task, fn in (("icl_regression", regression_report), ("icl_language", language_report)):
        runs = [r for r in records if r["config"]["task"]["name"] == task]
        if runs:
            header = f"# {benchmark}: {task} ({profile} profile)\n\n{describe(runs)}"
            written += fn(runs, header, f"{task}, {title}", out_dir)
    return written
