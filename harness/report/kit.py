"""The report kit: what every report module builds on (grouping runs over seeds, ``mean ± std``,
tables in Markdown, CSV and LaTeX, figures in PNG and PDF, colours, labels), and the report any
task gets (``generic_report``: a table of every final metric and the learning curves).

A report module for a benchmark family lives beside this one (``copy``, ``recall``, ``icl``,
``lm``), names the tasks it reports in ``TASKS`` and defines
``report(records, benchmark, profile, out_dir) -> list[Path]``; ``harness.report.cli`` finds it.
Report modules import only this kit and ``harness.run.records`` (the in-context learning report
also ``tasks`` and ``harness.run.eval_sets``, to score its n-gram baselines on the records' set).
"""
from __future__ import annotations

import copy
import math
from collections import defaultdict
from pathlib import Path

import matplotlib

from harness.run.records import ADDED_KEYS, NON_IDENTITY_KEYS, NON_IDENTITY_TASK_KEYS, NON_IDENTITY_TRAIN_KEYS

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


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


def with_added_defaults(records: list[dict]) -> list[dict]:
    """``records`` with the config keys added since they were written filled in at their
    ``ADDED_KEYS`` default (the value that keeps their ids), so that an older record and a newer
    one of the same run compare equal (``attention`` before and after ``mixer.position``). A
    ``mixer.*`` or ``task.*`` key is filled only where another record of the same mixer or task
    has it (``tmm`` gets no ``position``). The records are copied, not changed."""
    present: dict[tuple[str, str], set[str]] = defaultdict(set)  # (group, name) -> its keys in any record
    for r in records:
        for group in ("mixer", "task"):
            fields = r["config"].get(group)
            if isinstance(fields, dict):
                present[(group, str(fields.get("name")))].update(fields)
    out = []
    for r in records:
        config = copy.deepcopy(r["config"])
        for path, default in ADDED_KEYS.items():
            group, _, key = path.rpartition(".")
            fields = config.get(group) if group else config
            if not isinstance(fields, dict) or key in fields:
                continue
            if group in ("mixer", "task") and key not in present[(group, str(fields.get("name")))]:
                continue
            fields[key] = default
        out.append({**r, "config": config})
    return out


# what says where or how a run wrote, not what it computed (the records' own list), and the seed and
# thread count, which every table averages over or does not show
IGNORED_KEYS = ("seed", "train.threads", *NON_IDENTITY_KEYS, *(f"train.{k}" for k in NON_IDENTITY_TRAIN_KEYS),
                *(f"task.{k}" for k in NON_IDENTITY_TASK_KEYS))


def ignored(key: str) -> bool:
    """Whether the dotted config ``key`` is one that tables do not tell apart (``gpu.lock_dir`` too)."""
    return any(key == k or key.startswith(k + ".") for k in IGNORED_KEYS)


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

    return [k for k in keys if not ignored(k) and k not in ("mixer.name", "task.protocol") and varies(k)]


def group_key(record: dict, extra: tuple[str, ...] = ()) -> tuple:
    """(mixer, protocol, values of ``extra`` keys): the runs that differ only by seed."""
    flat = flatten(record["config"])
    return (record["config"]["mixer"]["name"], str(record["config"]["task"].get("protocol", "-")),
            *(flat.get(k) for k in extra))


def settings_label(name: str, extra: tuple[str, ...] | list[str], values: tuple | list) -> str:
    """``name`` and the settings that vary, ``attention, position=nope``; a setting this run does not
    have (``position`` of ``tmm``) is left out."""
    return name + "".join(f", {k.split('.')[-1]}={v}" for k, v in zip(extra, values) if v is not None)


def flops_to_reach(curve: list[dict], threshold: float, metric: str = "accuracy_in") -> float | None:
    """Cumulative training FLOPs at the first evaluation where ``metric >= threshold``."""
    for point in curve:
        if point.get(metric, -math.inf) >= threshold:
            return point["train_flops"]
    return None


def time_to_reach(curve: list[dict], threshold: float, metric: str, below: bool = False) -> tuple[float, float] | None:
    """(training FLOPs, training seconds) at the first evaluation where ``metric`` reaches ``threshold``
    (``>=``, or ``<=`` with ``below``)."""
    for point in curve:
        value = point.get(metric)
        if value is not None and (value <= threshold if below else value >= threshold):
            return point["train_flops"], point["train_time_s"]
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


def percent_mean_std(values: list[float]) -> str:
    """``mean ± std`` over seeds of fractions, in percent with one decimal; ``-`` when empty."""
    if not values:
        return "-"
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{100 * mean:.1f}"
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def status_note(runs: list[dict]) -> str:
    """``3/4 ok (1 diverged at step 40)``: how many of ``runs`` finished, and what became of the rest."""
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


def write_table(df: pd.DataFrame, out_dir: Path, stem: str, header: str) -> list[Path]:
    """``df`` as ``<stem>.md`` (under ``header``), ``.csv`` and ``.tex`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.md", out_dir / f"{stem}.csv", out_dir / f"{stem}.tex"]
    paths[0].write_text(header + "\n\n" + df.to_markdown(index=False) + "\n")
    df.to_csv(paths[1], index=False)
    latex = df.astype(str).apply(lambda col: col.str.replace("%", r"\%").str.replace("±", r"$\pm$").str.replace("_", r"\_"))
    latex.columns = [c.replace("%", r"\%").replace("_", r"\_") for c in df.columns]
    paths[2].write_text(latex.style.hide(axis="index").to_latex(hrules=True) + "\n")
    return paths


def save_figure(fig, out_dir: Path, stem: str) -> list[Path]:
    """``fig`` as ``<stem>.png`` and ``.pdf`` in ``out_dir`` (then closed)."""
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.pdf"]
    for p in paths:  # no creation date in PDFs: regenerating a report leaves unchanged plots byte-identical
        fig.savefig(p, dpi=150, bbox_inches="tight", metadata={"CreationDate": None} if p.suffix == ".pdf" else None)
    plt.close(fig)
    return paths


def mixer_colors(mixers: list[str]) -> dict[str, str]:
    """One colour per legend label, stable under reordering (tab10; tab20 beyond 10 labels, so that no
    two share a colour up to 20)."""
    labels = sorted(set(mixers))
    cmap, size = (plt.get_cmap("tab10"), 10) if len(labels) <= 10 else (plt.get_cmap("tab20"), 20)
    return {m: cmap(i % size) for i, m in enumerate(labels)}


def _in_distribution_metrics(records: list[dict]) -> list[str]:
    """The ``*_in`` metrics of the finished runs' learning curves, loss first."""
    keys = {k for r in records if r["status"] == "ok" for p in r["curve"] for k in p if k.endswith("_in")}
    return sorted(keys, key=lambda k: (k != "loss_in", k))


def generic_table(records: list[dict]) -> pd.DataFrame:
    """One row per (mixer, settings that vary): parameters, how many runs finished, every final
    metric of every evaluation set (mean ± std over seeds), speed. Works for any task."""
    extra = tuple(varying_keys(records))
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[group_key(r, extra)].append(r)
    rows = []
    for key, runs in sorted(groups.items(), key=lambda kv: repr(kv[0])):
        ok = [r for r in runs if r["status"] == "ok"]
        first = (ok or runs)[0]
        row = {"mixer": key[0], **dict(zip(extra, key[2:])), "params": first.get("params", {}).get("total"),
               "seeds": ",".join(str(r["config"]["seed"]) for r in sorted(runs, key=lambda r: r["config"]["seed"])),
               "runs": status_note(runs)}
        for name, metrics in (ok[0]["final"]["eval"].items() if ok else []):
            for metric in metrics:
                row[f"{metric} {name}"] = mean_std([r["final"]["eval"][name][metric] for r in ok], digits=4)
        row.update(memory_cells(ok))
        row["tokens/s"] = f"{mean([r['throughput']['tokens_per_s'] for r in ok]):,.0f}" if ok else "-"
        row["train time (s)"] = f"{mean([r['timing']['train_s'] for r in ok]):.0f}" if ok else "-"
        rows.append(row)
    return pd.DataFrame(rows)


def plot_learning_curves(records: list[dict], out_dir: Path, title: str) -> list[Path]:
    """Each in-distribution metric of the learning curve against training steps, one line per run."""
    metrics = _in_distribution_metrics(records)
    extra = tuple(varying_keys(records))
    ok = [r for r in records if r["status"] == "ok"]
    labels = {id(r): " ".join(str(v) for v in group_key(r, extra)[:1] + group_key(r, extra)[2:]) for r in ok}
    colors = mixer_colors(sorted(set(labels.values())))
    fig, axes = plt.subplots(1, max(1, len(metrics)), figsize=(4.5 * max(1, len(metrics)), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        shown = set()
        for r in sorted(ok, key=lambda r: labels[id(r)]):
            points = [p for p in r["curve"] if metric in p]
            name = labels[id(r)]
            ax.plot([p["step"] for p in points], [p[metric] for p in points], color=colors[name], alpha=0.85,
                    label=None if name in shown else name)
            shown.add(name)
        if metric == "loss_in":
            ax.set_yscale("log")
        ax.set_xlabel("training step")
        ax.set_ylabel(metric.removesuffix("_in") + " (in-distribution sets)")
        ax.grid(alpha=0.3, which="both")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, out_dir, "learning_curves")


def generic_report(records: list[dict], benchmark: str, profile: str, out_dir: Path) -> list[Path]:
    """The report any task gets: ``table`` (every final metric of every evaluation set) and
    ``learning_curves`` (the in-distribution metrics against training steps)."""
    first = records[0]
    header = (f"# {benchmark} ({profile} profile)\n\nTask {first['config']['task']['name']}; hardware "
              f"{hardware_label(first.get('environment', {}))}. Mean ± std over seeds of each final metric.")
    written = write_table(generic_table(records), out_dir, "table", header)
    if any(r["status"] == "ok" for r in records):
        written += plot_learning_curves(records, out_dir, f"{benchmark}, {hardware_label(first.get('environment', {}))}")
    return written


SAVED_COLUMN = "activations saved (MB)"  # autograd's saved tensors in one training step: device independent


def memory_cells(runs: list[dict]) -> dict[str, str]:
    """The memory columns of a table row for the finished ``runs`` of one group: the activation memory
    autograd saves per training step (mean; ``—`` for records written before it was measured), and
    the peak labelled by what it is: ``GPU peak allocated (MB)`` or ``CPU peak RSS (MB)`` (the
    process's resident memory, which measures the runtime more than the mixer)."""
    saved = [r["memory"]["saved_bytes"] for r in runs if r.get("memory", {}).get("saved_bytes") is not None]
    cells = {SAVED_COLUMN: f"{mean(saved) / 2**20:.1f}" if saved else "—"}
    gpu = any(r.get("environment", {}).get("device") == "cuda" for r in runs)
    peaks = [r["memory"]["peak_bytes"] for r in runs if r.get("memory", {}).get("peak_bytes") is not None]
    cells["GPU peak allocated (MB)" if gpu else "CPU peak RSS (MB)"] = f"{max(peaks) / 2**20:.0f}" if peaks else "—"
    return cells


def saved_bytes(record: dict) -> float | None:
    """A record's activation memory per training step (bytes autograd saves), None before it was measured."""
    return record.get("memory", {}).get("saved_bytes")
