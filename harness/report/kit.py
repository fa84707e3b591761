"""Records -> tables (Markdown, CSV, LaTeX) and plots (PNG, PDF) under ``results/<benchmark>/<profile>/``
(``copy_benchmark`` -> ``results/copy/``; other names as they are).

Copy-style tasks (evaluation sets ``L<length>``: ``copy``, ``selective_copy``) get the tables and
plots below; other tasks get their benchmark's own report, chosen by the records' task name
(``TASK_REPORTS``: MQAR in ``report_recall``, in-context learning in ``report_icl``, text in
``report_lm``).

    python -m harness.report --benchmark copy_benchmark
    python -m harness.report --all

Runs are grouped by (mixer, protocol) over seeds; runs that did not finish (``failed``, ``oom``,
``diverged``) are counted and named in the table, never shown as zeros. Unreadable or partial
record files, and temporary files of interrupted writes, are listed with their paths.
"""
from __future__ import annotations

import argparse
import importlib
import math
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from harness.run.records import load_records, stray_temporaries  # noqa: E402

THRESHOLDS = (0.9, 0.99)


def hardware_label(env: dict) -> str:
    """Short label of a record's ``environment``: the GPU name, or '<n>-thread CPU (<m> cores)'."""
    if env.get("device") == "cuda":
        return str(env.get("gpu", "cuda"))
    return f"{env.get('torch_threads', '?')}-thread CPU ({env.get('cpu_count', '?')} cores)"


def flatten(config: dict, prefix: str = "") -> dict[str, object]:
    """``{"train": {"lr": 1}} -> {"train.lr": 1}``; lists become tuples."""
    out: dict[str, object] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = tuple(value) if isinstance(value, list) else value
    return out


IGNORED_KEYS = ("seed", "results_dir", "force", "concurrent_runs", "train.progress", "train.threads", "task.cache_dir")

# task name -> module with ``report(records, benchmark, profile, out_dir) -> list[Path]``
TASK_REPORTS = {"mqar": "harness.report.recall", "icl_regression": "harness.report.icl",
                "icl_language": "harness.report.icl", "lm_text": "harness.report.lm", "copy_text": "harness.report.lm"}


def varying_keys(records: list[dict]) -> list[str]:
    """Config keys (besides mixer, protocol and seed) whose values differ between records."""
    flats = [flatten(r["config"]) for r in records]
    keys = sorted(set().union(*flats)) if flats else []

    def varies(key: str) -> bool:
        if key.startswith("mixer."):  # options differ between mixers by design; compare within one mixer
            by_mixer = defaultdict(set)
            for f in flats:
                by_mixer[f["mixer.name"]].add(repr(f.get(key)))
            return any(len(v) > 1 for v in by_mixer.values())
        return len({repr(f.get(key)) for f in flats}) > 1

    return [k for k in keys if k not in IGNORED_KEYS and k not in ("mixer.name", "task.protocol") and varies(k)]


def group_key(record: dict, extra: tuple[str, ...] = ()) -> tuple:
    """(mixer, protocol, values of ``extra`` keys): the runs that differ only by seed."""
    flat = flatten(record["config"])
    return (record["config"]["mixer"]["name"], str(record["config"]["task"].get("protocol", "-")),
            *(flat.get(k) for k in extra))


def flops_to_reach(curve: list[dict], threshold: float, metric: str = "accuracy_in") -> float | None:
    """Cumulative training FLOPs at the first evaluation where ``metric >= threshold``."""
    for point in curve:
        if point.get(metric, -math.inf) >= threshold:
            return point["train_flops"]
    return None


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def mean_std(values: list[float], digits: int = 3, scale: float = 1.0) -> str:
    """``mean ± std`` (sample std over seeds) of ``scale * values``; ``-`` when empty."""
    if not values:
        return "-"
    values = [scale * v for v in values]
    m = mean(values)
    if len(values) == 1:
        return f"{m:.{digits}f}"
    std = (sum((v - m) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return f"{m:.{digits}f} ± {std:.{digits}f}"


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{100 * mean:.1f}"
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def _status_note(runs: list[dict]) -> str:
    counts: dict[str, int] = defaultdict(int)
    for r in runs:
        counts[r["status"]] += 1
    note = f"{counts.pop('ok', 0)}/{len(runs)} ok"
    extra = []
    for status, n in sorted(counts.items()):
        detail = ""
        if status == "diverged":
            steps = [str(r.get("diverged_step")) for r in runs if r["status"] == "diverged"]
            detail = f" at step {', '.join(steps)}"
        extra.append(f"{n} {status}{detail}")
    return note + (f" ({'; '.join(extra)})" if extra else "")


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
               "runs": _status_note(runs)}
        sets = list(ok[0]["final"]["eval"]) if ok else []
        for name in sets:
            row[f"acc {name} (%)"] = _mean_std([r["final"]["eval"][name]["accuracy"] for r in ok])
        for name in sets:
            if "exact_match" in ok[0]["final"]["eval"][name]:
                row[f"exact {name} (%)"] = _mean_std([r["final"]["eval"][name]["exact_match"] for r in ok])
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


def write_table(df: pd.DataFrame, out_dir: Path, stem: str, header: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.md", out_dir / f"{stem}.csv", out_dir / f"{stem}.tex"]
    paths[0].write_text(header + "\n\n" + df.to_markdown(index=False) + "\n")
    df.to_csv(paths[1], index=False)
    latex = df.astype(str).apply(lambda col: col.str.replace("%", r"\%").str.replace("±", r"$\pm$").str.replace("_", r"\_"))
    latex.columns = [c.replace("%", r"\%").replace("_", r"\_") for c in df.columns]
    paths[2].write_text(latex.style.hide(axis="index").to_latex(hrules=True) + "\n")
    return paths


def save_figure(fig, out_dir: Path, stem: str) -> list[Path]:
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.pdf"]
    for p in paths:  # no creation date in PDFs: regenerating a report leaves unchanged plots byte-identical
        fig.savefig(p, dpi=150, bbox_inches="tight", metadata={"CreationDate": None} if p.suffix == ".pdf" else None)
    plt.close(fig)
    return paths


def _mixer_colors(mixers: list[str]) -> dict[str, str]:
    cmap = plt.get_cmap("tab10")
    return {m: cmap(i % 10) for i, m in enumerate(sorted(mixers))}


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
    colors = _mixer_colors(list({label(r, extra) for r in ok}))
    fig, axes = plt.subplots(1, max(1, len(protocols)), figsize=(5 * max(1, len(protocols)), 3.8), squeeze=False)
    panels = [(ax, protocol, [r for r in ok if group_key(r)[1] == protocol])
              for ax, protocol in zip(axes[0], protocols)]
    return fig, panels, extra, colors


def plot_accuracy_vs_length(records: list[dict], out_dir: Path, title: str) -> list[Path]:
    """Token accuracy against evaluation length, one panel per protocol, training range shaded."""
    fig, panels, extra, colors = _protocol_panels(records)
    for ax, protocol, runs in panels:
        lo, hi = runs[0]["task_summary"]["train_lengths"]
        if lo == hi:  # a single training length: mark it
            ax.axvline(lo, color="0.75", linewidth=6, alpha=0.6, label="training length")
        else:
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


def time_to_reach(curve: list[dict], threshold: float, metric: str, below: bool = False) -> tuple[float, float] | None:
    """(training FLOPs, training seconds) at the first evaluation where ``metric`` reaches ``threshold``
    (``>=``, or ``<=`` with ``below``)."""
    for point in curve:
        value = point.get(metric)
        if value is not None and (value <= threshold if below else value >= threshold):
            return point["train_flops"], point["train_time_s"]
    return None


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


def report_benchmark(records: list[dict], benchmark: str, results_dir: Path) -> list[Path]:
    """Write every table and plot of ``benchmark``, one folder per training profile."""
    written = []
    by_profile: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        if r["config"].get("benchmark") == benchmark:
            by_profile[r["config"]["train"]["profile"]].append(r)
    for profile, all_runs in sorted(by_profile.items()):
        out_dir = results_dir / benchmark.removesuffix("_benchmark") / profile
        by_module: dict[str, list[dict]] = defaultdict(list)
        for r in all_runs:
            module = TASK_REPORTS.get(r["config"]["task"]["name"])
            if module:
                by_module[module].append(r)
        for module, module_runs in sorted(by_module.items()):
            written += importlib.import_module(module).report(module_runs, benchmark, profile, out_dir)
        runs = [r for r in all_runs if r["config"]["task"]["name"] not in TASK_REPORTS]
        if not runs:
            continue
        header = f"# {benchmark} ({profile} profile)\n\n{describe(runs)}"
        written += write_table(summary_table(runs), out_dir, "table", header)
        written += write_table(thresholds_table(runs), out_dir, "thresholds",
                               f"# {benchmark}: training FLOPs and seconds to reach a threshold\n\n{describe(runs)}")
        title = f"{benchmark}, {hardware_label(runs[0]['environment'])}"
        if any(r["status"] == "ok" for r in runs):
            written += plot_accuracy_vs_length(runs, out_dir, title)
            written += plot_loss_vs_flops(runs, out_dir, title)
            written += plot_loss_vs_memory(runs, out_dir, title)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--benchmark", action="append", default=[], help="benchmark name (repeatable)")
    parser.add_argument("--all", action="store_true", help="report every benchmark found in the records")
    parser.add_argument("--results-dir", type=Path, default=Path("results"))
    args = parser.parse_args(argv)
    records, problems = load_records(args.results_dir / "runs")
    for path, problem in problems:
        print(f"unreadable record (not in the tables; rerunning its sweep reruns it): {path}: {problem}")
    for path in stray_temporaries(args.results_dir / "runs"):
        print(f"interrupted write (not a record; safe to delete): {path}")
    names = sorted({r["config"].get("benchmark", "adhoc") for r in records}) if args.all else args.benchmark
    if not names:
        parser.error("name a --benchmark or pass --all")
    for name in names:
        written = report_benchmark(records, name, args.results_dir)
        if not written:
            print(f"{name}: no records under {args.results_dir / 'runs'}")
        for path in written:
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
