"""The copy-task report (``copy``, ``selective_copy``: evaluation sets ``L<length>``).

String-level exact match is the headline (Jelassi et al. 2024): token accuracy hides failures (a
copy 90% right token by token can be right on few strings). Tables: ``table`` (exact match, then
token accuracy, per length; FLOPs to exact-match thresholds, memory, speed), ``thresholds`` (FLOPs
and seconds to exact-match, token-accuracy and loss thresholds) and, where the records carry
``state_bits``, ``memory_bound`` (each model's decoding state in bits after the prompt at each
evaluation length beside the ``L log2(alphabet)`` bits of the string, Jelassi et al.'s bound).
Plots: exact match and token accuracy against length (training range shaded), loss against FLOPs
and against the activation memory saved per training step (the peak for older records).

Runs are grouped by (mixer, protocol, the settings that vary) over seeds, so attention's
``mixer.position`` variants (RoPE, NoPE, Hard-ALiBi) stay apart; runs that did not finish are
counted and named, never shown as zeros.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from harness.report.kit import (aligned_curves, flops_to_reach, group_key, hardware_label, saved_bytes, memory_cells, legend_below, new_figure,
                                percent_mean_std, plot_series, save_figure, series_labels, series_styles, sort_key,
                                status_note, tidy_log_axis, time_to_reach, varying_keys, write_table)

THRESHOLDS = (0.9, 0.99)
TRAINING_RANGE = "0.92"  # very light grey behind the data: no mixer colour (the seed bands are tints of the mixers')
HEADLINE = "exact_match"  # string-level exact match: the metric of the tables' first columns and of FLOPs to X%
METRICS = ((HEADLINE, "exact"), ("accuracy", "acc"))  # (metric, column prefix), headline first


def _reach(ok: list[dict], threshold: float, metric: str = f"{HEADLINE}_in") -> str:
    reached = [f for r in ok if (f := flops_to_reach(r["curve"], threshold, metric)) is not None]
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
    for key, runs in sorted(groups.items(), key=lambda kv: sort_key(kv[0])):
        mixer, protocol = key[0], key[1]
        ok = [r for r in runs if r["status"] == "ok"]
        first = (ok or runs)[0]
        row = {"mixer": mixer, "protocol": protocol, **dict(zip(extra, key[2:])), "backend": first.get("backend", "?"),
               "params": first.get("params", {}).get("total"), "mixer params": first.get("params", {}).get("mixer"),
               "seeds": ",".join(str(r["config"]["seed"]) for r in sorted(runs, key=lambda r: r["config"]["seed"])),
               "runs": status_note(runs)}
        sets = list(ok[0]["final"]["eval"]) if ok else []
        for metric, prefix in METRICS:
            for name in sets:
                if metric in ok[0]["final"]["eval"][name]:
                    row[f"{prefix} {name} (%)"] = percent_mean_std([r["final"]["eval"][name][metric] for r in ok])
        row["eval loss (in-dist.)"] = (f"{sum(r['final']['loss_in'] for r in ok) / len(ok):.4f}" if ok else "-")
        for t in THRESHOLDS:
            row[f"FLOPs to {int(t * 100)}% exact"] = _reach(ok, t)
        row.update(memory_cells(ok))  # activations saved per step (device independent) and the peak, labelled
        shared = max((r["config"].get("concurrent_runs", 1) for r in ok), default=1)
        row["tokens/s"] = (f"{sum(r['throughput']['tokens_per_s'] for r in ok) / len(ok):,.0f}"
                           + (f" ({shared} runs sharing the device)" if shared > 1 else "") if ok else "-")
        row["train time (s)"] = (f"{sum(r['timing']['train_s'] for r in ok) / len(ok):.0f}" if ok else "-")
        rows.append(row)
    return pd.DataFrame(rows)


def _series(records: list[dict]) -> tuple[tuple[str, ...], dict[tuple, list[dict]], dict[tuple, str], dict[str, dict]]:
    """The finished runs by series ``(protocol, mixer, settings that vary)`` over seeds, with each
    series' legend label (the mixer and only the options that differ between its series) and style."""
    extra = tuple(varying_keys(records))
    by_series: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        if r["status"] == "ok":
            key = group_key(r, extra)
            by_series[(key[1], key[0], *key[2:])].append(r)
    labels = series_labels(sorted({s[1:] for s in by_series}, key=sort_key), extra)
    styles = series_styles(list(labels.values()))
    return extra, dict(sorted(by_series.items(), key=lambda kv: sort_key(kv[0]))), \
        {s: labels[s[1:]] for s in by_series}, styles


def _protocol_panels(records: list[dict], stem: str, rows: int = 1) -> tuple[plt.Figure, list[tuple[plt.Axes, str]]]:
    """A figure at the print width of ``stem`` with one column of panels per protocol of the
    finished runs (``rows`` panels in each): ``(figure, [(axes, protocol)] row by row)``."""
    protocols = sorted({group_key(r)[1] for r in records if r["status"] == "ok"})
    fig, axes = new_figure(stem, rows, max(1, len(protocols)), sharex="row" if rows > 1 else False)
    return fig, [(axes[row][i], protocol) for row in range(rows) for i, protocol in enumerate(protocols)]


def plot_accuracy_vs_length(records: list[dict], out_dir: Path, title: str) -> list[Path]:
    """Exact match (top row, the headline) and token accuracy (bottom row), in %, against evaluation
    length, one column per protocol, training range shaded; the mean over seeds, their spread as a band."""
    metrics = [(m, name) for m, name in ((HEADLINE, "exact match (%)"), ("accuracy", "token accuracy (%)"))
               if all(m in s for r in records if r["status"] == "ok" for s in r["final"]["eval"].values())]
    _, by_series, labels, styles = _series(records)
    fig, panels = _protocol_panels(records, "accuracy_vs_length", rows=len(metrics))
    n_protocols = len(panels) // max(1, len(metrics))
    for i, (ax, protocol) in enumerate(panels):
        metric, metric_name = metrics[i // max(1, n_protocols)]
        series = {s: runs for s, runs in by_series.items() if s[0] == protocol}
        lo, hi = next(iter(series.values()))[0]["task_summary"].get("train_lengths") or (None, None)
        if lo is not None and lo == hi:  # a single training length: mark it
            ax.axvline(lo, color=TRAINING_RANGE, linewidth=5, label="training length(s)", zorder=0)
        elif lo is not None:
            ax.axvspan(lo, hi, color=TRAINING_RANGE, label="training length(s)", zorder=0)
        all_lengths: set[int] = set()
        for s, runs in series.items():
            names = list(runs[0]["final"]["eval"])
            lengths = [int(n.removeprefix("L")) for n in names]
            per_seed = [[r["final"]["eval"][n][metric] for n in names] for r in runs]
            plot_series(ax, lengths, per_seed, styles[labels[s]], labels[s], scale=100)
            all_lengths.update(lengths)
        ax.set_xscale("log", base=2)
        if all_lengths:
            ax.set_xlim(min(all_lengths) / 1.3, max(all_lengths) * 1.3)
            ax.set_xticks(sorted(all_lengths), [str(n) for n in sorted(all_lengths)])
            ax.minorticks_off()
        ax.set_ylim(-3, 103)
        if i // max(1, n_protocols) == len(metrics) - 1:
            ax.set_xlabel("string length L")
        if i % n_protocols == 0:
            ax.set_ylabel(metric_name)
        ax.set_title(f"{protocol} protocol" if i < n_protocols else "")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    legend_below(fig)
    return save_figure(fig, out_dir, "accuracy_vs_length")


def plot_loss_vs_flops(records: list[dict], out_dir: Path, title: str) -> list[Path]:
    """In-distribution evaluation loss against cumulative training FLOPs: the mean over seeds, their
    spread as a band, a panel per protocol."""
    _, by_series, labels, styles = _series(records)
    fig, panels = _protocol_panels(records, "loss_vs_flops")
    for i, (ax, protocol) in enumerate(panels):
        for s, runs in by_series.items():
            if s[0] == protocol:
                xs, per_seed = aligned_curves(runs, "train_flops", "loss_in")
                plot_series(ax, xs, per_seed, styles[labels[s]], labels[s])
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training FLOPs (analytic, fwd + bwd)")
        if i == 0:
            ax.set_ylabel("eval loss, in-distribution")
        ax.set_title(f"{protocol} protocol")
        ax.grid(alpha=0.3, which="both")
        tidy_log_axis(ax, "x")
        tidy_log_axis(ax, "y")
    fig.suptitle(title)
    fig.tight_layout()
    legend_below(fig)
    return save_figure(fig, out_dir, "loss_vs_flops")


def thresholds_table(records: list[dict], accuracy: tuple[float, ...] = THRESHOLDS,
                     losses: tuple[float, ...] = (1.0, 0.1)) -> pd.DataFrame:
    """Per (mixer, protocol): FLOPs and training wall time to reach exact-match, token-accuracy and
    loss thresholds (in-distribution evaluation), mean over the seeds; "not reached (k/n)" when a
    seed did not."""
    extra = tuple(varying_keys(records))
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        if r["status"] == "ok":
            groups[group_key(r, extra)].append(r)
    rows = []
    for key, runs in sorted(groups.items(), key=lambda kv: sort_key(kv[0])):
        row = {"mixer": key[0], "protocol": key[1], **dict(zip(extra, key[2:]))}
        targets = [(f"exact match >= {t:.0%}", f"{HEADLINE}_in", t, False) for t in accuracy]
        targets += [(f"token accuracy >= {t:.0%}", "accuracy_in", t, False) for t in accuracy]
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
    """Final in-distribution evaluation loss against the activation memory autograd saves per training
    step (device independent), one point per run; against the peak (labelled) for records written
    before that was measured."""
    _, by_series, labels, styles = _series(records)
    fig, panels = _protocol_panels(records, "loss_vs_memory")
    ok = [r for r in records if r["status"] == "ok"]
    gpu = ok and ok[0]["environment"].get("device") == "cuda"
    saved = bool(ok) and all(saved_bytes(r) is not None for r in ok)
    for i, (ax, protocol) in enumerate(panels):
        for s, runs in by_series.items():
            if s[0] != protocol:
                continue
            style = styles[labels[s]]
            mem = [(saved_bytes(r) if saved else r["memory"].get("activation_peak_bytes" if gpu else "peak_bytes", 0)) / 2**20
                   for r in runs]
            ax.scatter(mem, [max(r["final"]["loss_in"], 1e-6) for r in runs], color=style["color"],
                       marker=style["marker"], facecolors=style["markerfacecolor"], s=18, label=labels[s])
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("activation memory per step (MB saved for backward)" if saved else
                      "peak training memory (MB, " + ("activations" if gpu else "process RSS") + ")")
        if i == 0:
            ax.set_ylabel("final eval loss, in-distribution")
        ax.set_title(f"{protocol} protocol")
        ax.grid(alpha=0.3, which="both")
        tidy_log_axis(ax, "x")
        tidy_log_axis(ax, "y")
    fig.suptitle(title)
    fig.tight_layout()
    legend_below(fig, title="one point per run (seed)")
    return save_figure(fig, out_dir, "loss_vs_memory")


def memory_bound_table(records: list[dict]) -> pd.DataFrame | None:
    """Per (mixer, settings that vary): the decoding state in bits after the prompt of each
    evaluation length (the record's ``state_bits``, 32 bits per value) beside the bits of the
    string (``task_summary.string_bits``: L log2(alphabet)), and the shortest evaluation length at
    which the state holds fewer bits than the string (from there no model of that size can copy
    every string). None when no record carries ``state_bits`` (records written before it)."""
    runs = [r for r in records if r.get("state_bits")]
    if not runs:
        return None
    extra = tuple(varying_keys(records))
    groups: dict[tuple, dict] = {}
    for r in runs:
        groups.setdefault(group_key(r, extra), r)  # the state's size does not depend on the seed
    strings = runs[0]["task_summary"].get("string_bits", {})
    names = sorted({n for r in runs for n in r["state_bits"]}, key=lambda n: int(n.removeprefix("L")))
    rows = []
    for key, r in sorted(groups.items(), key=lambda kv: sort_key(kv[0])):
        row = {"mixer": key[0], "protocol": key[1], **dict(zip(extra, key[2:]))}
        short = [n for n in names if n in strings and r["state_bits"].get(n) is not None
                 and r["state_bits"][n] < strings[n]]
        for n in names:
            bits = r["state_bits"].get(n)
            row[f"state bits {n}"] = "-" if bits is None else f"{bits:.3g}"
        row["state < string from"] = short[0] if short else "never here"
        rows.append(row)
    rows.append({"mixer": "(string: L log2 alphabet)",
                 **{f"state bits {n}": f"{strings[n]:.3g}" for n in names if n in strings}})
    return pd.DataFrame(rows)


def describe(records: list[dict]) -> str:
    """One paragraph: hardware, software, training budget, seeds, eval sets."""
    r = records[0]
    env, train = r["environment"], r["config"]["train"]
    model = r["config"]["model"]
    eos = " (and its end-of-string token)" if r["task_summary"].get("eos") else ""
    torch_v = env.get("packages", {}).get("torch", "?")
    return (f"Hardware: {hardware_label(env)}; torch {torch_v}; precision {train['precision']}. "
            f"Backbone: d_model {model['d_model']}, {model['n_layers']} layers, MLP x{model['mlp_ratio']}. "
            f"Training: {train['steps']} steps x batch {train['batch_size']}, AdamW lr {train['lr']}, "
            f"warmup {train['warmup_steps']}, cosine to {train['min_lr_ratio']}x, same for every mixer. "
            f"{protocol_note(records)}"
            f"Headline: exact match, the share of strings whose whole copy{eos} is right under teacher forcing "
            f"(equal to a correct greedy decode); token accuracy beside it; mean ± std over seeds. "
            f"FLOPs to X% exact: first evaluation whose in-distribution exact match reaches X% (mean over seeds).")


def protocol_note(records: list[dict]) -> str:
    """The task's protocol in words, where every record agrees: training lengths, EOS, packing
    (Jelassi et al.'s options), evaluation lengths; "" when the protocols differ (the table says)."""
    summaries = [r["task_summary"] for r in records]
    keys = ("train_lengths", "eos", "packed_length", "eval_lengths")
    summary = summaries[0]
    if not summary.get("train_lengths") or any({k: s.get(k) for k in keys} != {k: summary.get(k) for k in keys}
                                               for s in summaries):
        return ""
    lo, hi = summary["train_lengths"]
    note = f"Training strings of length {lo}-{hi}"
    if summary.get("eos"):
        note += ", closed by a scored end-of-string token"
    if summary.get("packed_length"):
        note += f", packed into rows of {summary['packed_length']} tokens"
    lengths = summary.get("eval_lengths")
    return note + (f"; evaluation at L = {', '.join(map(str, lengths))}. " if lengths else ". ")


TASKS = ("copy", "selective_copy")  # evaluation sets L<length>, token accuracy and exact match


def report(records: list[dict], benchmark: str, profile: str, out_dir: Path) -> list[Path]:
    """The tables (``table``, ``thresholds``, ``memory_bound`` where the records carry ``state_bits``)
    and plots (exact match and token accuracy against length, loss against FLOPs and against
    memory) of copy-style runs."""
    header = f"# {benchmark} ({profile} profile)\n\n{describe(records)}"
    written = write_table(summary_table(records), out_dir, "table", header, latex="copy.table")
    written += write_table(thresholds_table(records), out_dir, "thresholds",
                           f"# {benchmark}: training FLOPs and seconds to reach a threshold\n\n{describe(records)}",
                           latex="copy.thresholds")
    bound = memory_bound_table(records)
    if bound is not None:
        written += write_table(bound, out_dir, "memory_bound", (
            f"# {benchmark}: decoding state against the string (Jelassi et al.'s memory bound)\n\n"
            "Bits each model holds to decode the copy after reading `[BOS] s [SEP]` (Mixer.state_size values over "
            "all layers, 32 bits per value) beside the bits of a uniformly random string, L log2(alphabet). Where "
            "the state holds fewer bits than the string, no model of that state size copies every string of that "
            "length; where it holds more, the bound says nothing."), latex="copy.memory_bound")
    title = f"{benchmark}, {hardware_label(records[0]['environment'])}"
    if any(r["status"] == "ok" for r in records):
        written += plot_accuracy_vs_length(records, out_dir, title)
        written += plot_loss_vs_flops(records, out_dir, title)
        written += plot_loss_vs_memory(records, out_dir, title)
    return written
