"""The language-modelling benchmark's report (``lm_text`` and the ``copy_text`` probe).

- ``table``: one row per (task, mixer): parameter counts (the matching target, d_model and MLP
  width chosen), final evaluation loss (nats per token; bits per token for ``lm_text``, copy
  accuracy for ``copy_text``), training FLOPs, activation memory saved per step and the peak (labelled GPU or CPU RSS), throughput, mean ± std over seeds;
- ``loss_vs_flops``: evaluation loss against training FLOPs, a panel per task, a line per run;
- ``loss_vs_memory``: final evaluation loss against the activation memory autograd saves per training
  step, a panel per task, a point per mixer (records written before it was measured: the peak, GPU
  allocated or CPU resident above the run's start).
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from harness.run.records import mixer_label
from harness.report.kit import (flatten, hardware_label, saved_bytes, memory_cells, legend_below, mean, mean_std, new_figure, plot_series, save_figure,
                                series_labels, series_styles, sort_key, status_note, tidy_log_axis, varying_keys,
                                write_table)

TASKS = ("lm_text", "copy_text")  # the tasks whose runs this module reports


def peak_memory(record: dict) -> float:
    """Peak training memory in bytes: allocated on GPU, resident above the start on CPU."""
    memory = record["memory"]
    return float(memory.get("peak_above_start_bytes", memory["peak_bytes"]))


def groups(records: list[dict]) -> tuple[list[str], dict[tuple, list[dict]]]:
    """``(task, mixer, other varying settings) -> runs`` (seeds together); the settings that vary are
    found within each task (the two tasks have different options by design)."""
    tasks = {r["config"]["task"]["name"] for r in records}
    extra = sorted(set().union(*(varying_keys([r for r in records if r["config"]["task"]["name"] == t]) for t in tasks)))
    out: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        flat = flatten(r["config"])
        out[(r["config"]["task"]["name"], mixer_label(r["config"]), *(flat.get(k) for k in extra))].append(r)
    return extra, dict(sorted(out.items(), key=lambda kv: sort_key(kv[0])))


def table(records: list[dict]) -> pd.DataFrame:
    extra, by_key = groups(records)
    rows = []
    for key, runs in by_key.items():
        ok = [r for r in runs if r["status"] == "ok"]
        first = (ok or runs)[0]
        matching = first.get("matching") or {}
        evals = [r["final"]["eval"]["validation"] for r in ok]
        row = {"task": key[0], "mixer": key[1], **dict(zip(extra, key[2:])),
               "params": first.get("params", {}).get("total"), "mixer params": first.get("params", {}).get("mixer"),
               "target": matching.get("target", "-"),
               "d_model": matching.get("d_model", first["config"]["model"]["d_model"]),
               "mlp hidden": matching.get("mlp_hidden") or "ratio", "runs": status_note(runs),
               "eval loss (nats/token)": mean_std([e["loss"] for e in evals])}
        row["bits/token"] = mean_std([e["bits_per_token"] for e in evals]) if key[0] == "lm_text" else "-"
        row["copy acc (%)"] = mean_std([e["accuracy"] for e in evals], 1, 100) if key[0] == "copy_text" else "-"
        row["train FLOPs"] = f"{mean([r['train_flops'] for r in ok]):.2e}" if ok else "-"
        row.update(memory_cells(ok))  # activations saved per step (device independent) and the peak, labelled
        row["tokens/s"] = f"{mean([r['throughput']['tokens_per_s'] for r in ok]):,.0f}" if ok else "-"
        rows.append(row)
    return pd.DataFrame(rows)


def _task_panels(records: list[dict], stem: str) -> tuple[plt.Figure, list[tuple[plt.Axes, str, list[tuple[tuple, list[dict]]]]],
                                                          dict[tuple, str], dict[str, dict]]:
    """A figure at the print width of ``stem`` with one panel per task: ``(figure, [(axes, task, its
    (key, runs) groups)], a legend label per group, a style per label)``."""
    extra, by_key = groups(records)
    tasks = [t for t in TASKS if any(k[0] == t for k in by_key)]
    names = series_labels(sorted({k[1:] for k in by_key}, key=sort_key), extra)  # the same mixer alike in both tasks
    labels = {k: names[k[1:]] for k in by_key}
    styles = series_styles(list(labels.values()))
    fig, axes = new_figure(stem, 1, len(tasks))
    panels = [(ax, task, [(key, runs) for key, runs in by_key.items() if key[0] == task])
              for ax, task in zip(axes[0], tasks)]
    return fig, panels, labels, styles


def plot_loss_vs_flops(records: list[dict], out_dir: Path, title: str) -> list[Path]:
    """Evaluation loss against training FLOPs: the mean over seeds, their spread as a band."""
    fig, panels, labels, styles = _task_panels(records, "loss_vs_flops")
    for ax, task, keyed in panels:
        for key, runs in keyed:
            ok = [r for r in runs if r["status"] == "ok"]
            if ok:
                n = min(len(r["curve"]) for r in ok)
                plot_series(ax, [p["train_flops"] for p in ok[0]["curve"][:n]],
                            [[p["eval"]["validation"]["loss"] for p in r["curve"][:n]] for r in ok],
                            styles[labels[key]], labels[key])
        ax.set_xscale("log")
        ax.set_xlabel("training FLOPs (analytic, fwd + bwd)")
        ax.set_ylabel("eval loss (nats/token)")
        ax.set_title(task + (" (loss on the repeated half)" if task == "copy_text" else ""))
        ax.grid(alpha=0.3, which="both")
        tidy_log_axis(ax, "x")
    fig.suptitle(title)
    fig.tight_layout()
    legend_below(fig)
    return save_figure(fig, out_dir, "loss_vs_flops")


def plot_loss_vs_memory(records: list[dict], out_dir: Path, title: str) -> list[Path]:
    """Final evaluation loss against the activation memory autograd saves per training step (device
    independent), a point per run (seed); against the peak for records written before that was measured."""
    fig, panels, labels, styles = _task_panels(records, "loss_vs_memory")
    saved = all(saved_bytes(r) is not None for r in records if r["status"] == "ok")
    for ax, task, keyed in panels:
        for key, runs in keyed:
            ok = [r for r in runs if r["status"] == "ok"]
            if not ok:
                continue
            style = styles[labels[key]]
            ax.scatter([(saved_bytes(r) if saved else peak_memory(r)) / 2**20 for r in ok], [r["final"]["eval"]["validation"]["loss"] for r in ok],
                       color=style["color"], marker=style["marker"], s=18, label=labels[key])
        ax.set_xlabel("activation memory per step (MB saved for backward)" if saved
                      else "peak training memory (MB)")
        ax.set_ylabel("final eval loss (nats/token)")
        ax.set_title(task)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    legend_below(fig, title="a point per run (seed)")
    return save_figure(fig, out_dir, "loss_vs_memory")


def describe(records: list[dict]) -> str:
    r = records[0]
    train, model = r["config"]["train"], r["config"]["model"]
    corpus = r["task_summary"]["corpus"]
    target = model.get("match_params")
    size = (f"every model matched to {target:,} parameters (within {100 * model.get('match_tolerance', 0.02):.0f}%; "
            f"{model.get('match_by', 'd_model+mlp')} adjusted)" if target else f"d_model {model['d_model']}")
    return (f"Hardware: {hardware_label(r['environment'])}; precision {train['precision']}. Corpus: {corpus['source']}, "
            f"{corpus['train_files']} training / {corpus['validation_files']} validation files, "
            f"{corpus['train_tokens']:,} / {corpus['validation_tokens']:,} tokens ({corpus['tokenizer']}, sha256 "
            f"{corpus['sha256']}). Backbone: {model['n_layers']} layers, {size}. Training: {train['steps']} steps x "
            f"batch {train['batch_size']}, AdamW lr {train['lr']}, same for every mixer. Loss: mean cross-entropy on "
            f"the fixed validation windows (copy_text: on the repeated half only); mean ± std over seeds.")


def report(records: list[dict], benchmark: str, profile: str, out_dir: Path) -> list[Path]:
    header = f"# {benchmark} ({profile} profile)\n\n{describe(records)}"
    written = write_table(table(records), out_dir, "table", header, latex="lm.table")
    if any(r["status"] == "ok" for r in records):
        title = f"{benchmark}, {hardware_label(records[0]['environment'])}"
        written += plot_loss_vs_flops(records, out_dir, title)
        written += plot_loss_vs_memory(records, out_dir, title)
    return written
