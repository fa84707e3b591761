"""The copy-task report (``copy``, ``selective_copy``: evaluation sets ``L<length>``): a table of
accuracy per length, exact match, FLOPs to thresholds, memory and speed; a thresholds table;
accuracy against length (training range shaded), loss against FLOPs and against peak memory.
Runs are grouped by (mixer, protocol) over seeds; runs that did not finish are counted and named,
never shown as zeros.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from harness.report.kit import (flops_to_reach, group_key, hardware_label, mixer_colors, percent_mean_std,
                                save_figure, status_note, time_to_reach, varying_keys, write_table)

THRESHOLDS = (0.9, 0.99)


def _reach(ok: list[dict], threshold: float) -> str:
    reached = [f for r in ok if (f := flops_to_reach(r["curve"], threshold)) is not None]
    if not ok:
        return "-"
    if len(reached) < len(ok):
        return f"not reached ({len(reached)}/{len(ok)})"
    return f"{sum(reached) / len(reached):.2e}"


def summary_table(records: list[dict]) -> pd.DataFrame:
    """One row per (mixer, protocol, other varying settings): params, accuracy per eval set, loss,
    FLOPs to thresholds, memory, speed."""
    extra = tuple(varying_keys(records))
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[group_key(r, extra)].append(r)
    rows = []
    for key, runs in sorted(groups.items(), key=lambda kv: repr(kv[0])):
        mixer, protocol = key[0], key[1]
        ok = [r for r in runs if r["status"] == "ok"]
        first = (ok or runs)[0]
        row = {"mixer": mixer, "protocol": protocol, **dict(zip(extra, key[2:])), "backend": first.get("backend", "?"),
               "params": first.get("params", {}).get("total"), "mixer params": first.get("params", {}).get("mixer"),
               "seeds": ",".join(str(r["config"]["seed"]) for r in sorted(runs, key=lambda r: r["config"]["seed"])),
               "runs": status_note(runs)}
        sets = list(ok[0]["final"]["eval"]) if ok else []
        for name in sets:
            row[f"acc {name} (%)"] = percent_mean_std([r["final"]["eval"][name]["accuracy"] for r in ok])
        for name in sets:
            if "exact_match" in ok[0]["final"]["eval"][name]:
                row[f"exact {name} (%)"] = percent_mean_std([r["final"]["eval"][name]["exact_match"] for r in ok])
        row["eval loss (in-dist.)"] = (f"{sum(r['final']['loss_in'] for r in ok) / len(ok):.4f}" if ok else "-")
        for t in THRESHOLDS:
            row[f"FLOPs to {int(t * 100)}%"] = _reach(ok, t)
        row["peak memory (MB)"] = (f"{max(r['memory']['peak_bytes'] for r in ok) / 2**20:.0f}" if ok else "-")
        shared = max((r["config"].get("concurrent_runs", 1) for r in ok), default=1)
        row["tokens/s"] = (f"{sum(r['throughput']['tokens_per_s'] for r in ok) / len(ok):,.0f}"
                           + (f" ({shared} runs sharing the device)" if shared > 1 else "") if ok else "-")
        row["train time (s)"] = (f"{sum(r['timing']['train_s'] for r in ok) / len(ok):.0f}" if ok else "-")
        rows.append(row)
    return pd.DataFrame(rows)


def label(record: dict, extra: tuple[str, ...]) -> str:
    """Legend label: the mixer, plus the other settings that vary in this benchmark."""
    key = group_key(record, extra)
    return key[0] + "".join(f", {k.split('.')[-1]}={v}" for k, v in zip(extra, key[2:]))


def _protocol_panels(records: list[dict]) -> tuple[plt.Figure, list[tuple[plt.Axes, str, list[dict]]],
                                                    tuple[str, ...], dict[str, str]]:
    """A figure with one panel per protocol of the finished runs: ``(figure, [(axes, protocol, its
    finished runs)], the settings that vary, a colour per legend label)``."""
    ok = [r for r in records if r["status"] == "ok"]
    protocols = sorted({group_key(r)[1] for r in ok})
    extra = tuple(varying_keys(records))
    colors = mixer_colors(list({label(r, extra) for r in ok}))
    fig, axes = plt.subplots(1, max(1, len(protocols)), figsize=(5 * max(1, len(protocols)), 3.8), squeeze=False)
    panels = [(ax, protocol, [r for r in ok if group_key(r)[1] == protocol])
              for ax, protocol in zip(axes[0], protocols)]
    return fig, panels, extra, colors


def plot_accuracy_vs_length(records: list[dict], out_dir: Path, title: str) -> list[Path]:
    """Token accuracy against evaluation length, one panel per protocol, training range shaded."""
    fig, panels, extra, colors = _protocol_panels(records)
    for ax, protocol, runs in panels:
        lo, hi = runs[0]["task_summary"].get("train_lengths") or (None, None)
        if lo is not None and lo == hi:  # a single training length: mark it
            ax.axvline(lo, color="0.75", linewidth=6, alpha=0.6, label="training length")
        elif lo is not None:
            ax.axvspan(lo, hi, color="0.9", label="training lengths")
        by_mixer: dict[str, list[dict]] = defaultdict(list)
        for r in runs:
            by_mixer[label(r, extra)].append(r)
        all_lengths: set[int] = set()
        for mixer, group in sorted(by_mixer.items()):
            names = list(group[0]["final"]["eval"])
            lengths = [int(n.removeprefix("L")) for n in names]
            accs = [[r["final"]["eval"][n]["accuracy"] for r in group] for n in names]
            mean = [sum(a) / len(a) for a in accs]
            color = colors[mixer]
            ax.plot(lengths, mean, marker="o", color=color, label=f"{mixer} (mean of {len(group)} seeds)")
            for i in range(len(group)):  # every seed, thin: a bimodal outcome stays visible
                ax.plot(lengths, [a[i] for a in accs], color=color, linewidth=0.8, alpha=0.5, linestyle="--")
            all_lengths.update(lengths)
        if all_lengths:
            ax.set_xlim(min(all_lengths) / 1.3, max(all_lengths) * 1.3)
        ax.set_xscale("log", base=2)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("string length L")
        ax.set_ylabel("token accuracy on the copy")
        ax.set_title(f"{protocol} protocol")
        ax.grid(alpha=0.3)
    fig.axes[-1].legend(fontsize=8, loc="lower left")
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, out_dir, "accuracy_vs_length")


def plot_loss_vs_flops(records: list[dict], out_dir: Path, title: str) -> list[Path]:
    """In-distribution evaluation loss against cumulative training FLOPs, one line per run."""
    fig, panels, extra, colors = _protocol_panels(records)
    for ax, protocol, runs in panels:
        labelled = set()
        for r in sorted(runs, key=lambda r: label(r, extra)):
            mixer = label(r, extra)
            xs = [p["train_flops"] for p in r["curve"]]
            ys = [p["loss_in"] for p in r["curve"]]
            ax.plot(xs, ys, color=colors[mixer], alpha=0.85, label=None if mixer in labelled else mixer)
            labelled.add(mixer)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training FLOPs (analytic, forward + backward)")
        ax.set_ylabel("eval loss, in-distribution lengths")
        ax.set_title(f"{protocol} protocol")
        ax.grid(alpha=0.3, which="both")
    fig.axes[-1].legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, out_dir, "loss_vs_flops")


def thresholds_table(records: list[dict], accuracy: tuple[float, ...] = THRESHOLDS,
                     losses: tuple[float, ...] = (1.0, 0.1)) -> pd.DataFrame:
    """Per (mixer, protocol): FLOPs and training wall time to reach accuracy and loss thresholds
    (in-distribution evaluation), mean over the seeds that reached it."""
    extra = tuple(varying_keys(records))
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        if r["status"] == "ok":
            groups[group_key(r, extra)].append(r)
    rows = []
    for key, runs in sorted(groups.items(), key=lambda kv: repr(kv[0])):
        row = {"mixer": key[0], "protocol": key[1], **dict(zip(extra, key[2:]))}
        targets = [(f"accuracy >= {t:.0%}", "accuracy_in", t, False) for t in accuracy]
        targets += [(f"loss <= {t:g}", "loss_in", t, True) for t in losses]
        for label_, metric, t, below in targets:
            hits = [h for r in runs if (h := time_to_reach(r["curve"], t, metric, below)) is not None]
            if len(hits) < len(runs):
                row[f"FLOPs to {label_}"] = row[f"seconds to {label_}"] = f"not reached ({len(hits)}/{len(runs)})"
            else:
                row[f"FLOPs to {label_}"] = f"{sum(h[0] for h in hits) / len(hits):.2e}"
                row[f"seconds to {label_}"] = f"{sum(h[1] for h in hits) / len(hits):.1f}"
        rows.append(row)
    return pd.DataFrame(rows)


def plot_loss_vs_memory(records: list[dict], out_dir: Path, title: str) -> list[Path]:
    """Final in-distribution evaluation loss against peak training memory, one point per run."""
    fig, panels, extra, colors = _protocol_panels(records)
    ok = [r for r in records if r["status"] == "ok"]
    gpu = ok and ok[0]["environment"].get("device") == "cuda"
    for ax, protocol, runs in panels:
        labelled = set()
        for r in sorted(runs, key=lambda r: label(r, extra)):
            name = label(r, extra)
            mem = r["memory"].get("activation_peak_bytes" if gpu else "peak_bytes", 0) / 2**20
            ax.scatter([mem], [max(r["final"]["loss_in"], 1e-6)], color=colors[name], label=None if name in labelled else name)
            labelled.add(name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("peak training memory (MB, " + ("activations above weights, grads, optimizer" if gpu
                                                       else "process RSS") + ")")
        ax.set_ylabel("final eval loss, in-distribution")
        ax.set_title(f"{protocol} protocol")
        ax.grid(alpha=0.3, which="both")
    fig.axes[-1].legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, out_dir, "loss_vs_memory")


def describe(records: list[dict]) -> str:
    """One paragraph: hardware, software, training budget, seeds, eval sets."""
    r = records[0]
    env, train = r["environment"], r["config"]["train"]
    model = r["config"]["model"]
    torch_v = env.get("packages", {}).get("torch", "?")
    return (f"Hardware: {hardware_label(env)}; torch {torch_v}; precision {train['precision']}. "
            f"Backbone: d_model {model['d_model']}, {model['n_layers']} layers, MLP x{model['mlp_ratio']}. "
            f"Training: {train['steps']} steps x batch {train['batch_size']}, AdamW lr {train['lr']}, "
            f"warmup {train['warmup_steps']}, cosine to {train['min_lr_ratio']}x, same for every mixer. "
            f"Accuracy: mean ± std over seeds, teacher-forced token accuracy on the copied half; "
            f"FLOPs to X%: first evaluation whose mean in-distribution accuracy reaches X% (mean over seeds).")


TASKS = ("copy", "selective_copy")  # evaluation sets L<length>, token accuracy and exact match


def report(records: list[dict], benchmark: str, profile: str, out_dir: Path) -> list[Path]:
    """The tables (``table``, ``thresholds``) and plots (accuracy against length, loss against
    FLOPs and against memory) of copy-style runs."""
    header = f"# {benchmark} ({profile} profile)\n\n{describe(records)}"
    written = write_table(summary_table(records), out_dir, "table", header)
    written += write_table(thresholds_table(records), out_dir, "thresholds",
                           f"# {benchmark}: training FLOPs and seconds to reach a threshold\n\n{describe(records)}")
    title = f"{benchmark}, {hardware_label(records[0]['environment'])}"
    if any(r["status"] == "ok" for r in records):
        written += plot_accuracy_vs_length(records, out_dir, title)
        written += plot_loss_vs_flops(records, out_dir, title)
        written += plot_loss_vs_memory(records, out_dir, title)
    return written
