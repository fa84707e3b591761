"""The report kit: what every report module builds on (grouping runs over seeds, ``mean ± std``,
tables in Markdown, CSV and LaTeX, figures in PNG and PDF, colours, labels), and the report any
task gets (``generic_report``: a table of every final metric and the learning curves).

Print conventions, one home each: ``conf/report.yaml`` (figure widths per figure, single column
3.25 in or double 6.75 in; font size; the LaTeX tables' columns and display names);
``mixer_style`` (one colour, marker and line style per registered mixer, from the registry's
order, the same in every figure); ``SPREAD`` (what the shaded bands show: min-max over seeds);
``PERCENT_METRICS`` (fractions shown in % in figures and tables); ``latex_table`` (booktabs,
escaped, missing cells as an em dash, scaled to ``\textwidth`` only with a comment saying why).
PDFs embed TrueType fonts and carry no dates, so an unchanged report rewrites identical bytes.

A report module for a benchmark family lives beside this one (``copy``, ``recall``, ``icl``,
``lm``), names the tasks it reports in ``TASKS`` and defines
``report(records, benchmark, profile, out_dir) -> list[Path]``; ``harness.report.cli`` finds it.
Report modules import only this kit and ``harness.run.records`` (the in-context learning report
also ``tasks`` and ``harness.run.eval_sets``, to score its n-gram baselines on the records' set).
"""
from __future__ import annotations

import copy
import functools
import math
import re
import zlib
from collections import defaultdict
from pathlib import Path

import matplotlib
import yaml

import mixers
from harness.run.config import CONF_DIR
from harness.run.records import ADDED_KEYS, NON_IDENTITY_KEYS, NON_IDENTITY_TASK_KEYS, NON_IDENTITY_TRAIN_KEYS, mixer_label

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogFormatterSciNotation, LogLocator, NullFormatter  # noqa: E402


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
    """Config keys (besides mixer, protocol and seed) whose values differ between records; a hybrid
    stack is named by the mixer's label (``group_key``), and is a key only where two stacks of one
    label differ (in a layer's options)."""
    flats = [flatten(r["config"]) for r in records]
    keys = sorted(set().union(*flats)) if flats else []

    def varies(key: str) -> bool:
        if key == "model.stack":
            by_label = defaultdict(set)
            for r, f in zip(records, flats):
                by_label[mixer_label(r["config"])].add(repr(f.get(key)))
            return any(len(v) > 1 for v in by_label.values())
        if key.startswith("mixer."):  # options differ between mixers by design; compare within one mixer
            by_mixer = defaultdict(set)
            for f in flats:
                by_mixer[f["mixer.name"]].add(repr(f.get(key)))
            return any(len(v) > 1 for v in by_mixer.values())
        return len({repr(f.get(key)) for f in flats}) > 1

    return [k for k in keys if not ignored(k) and k not in ("mixer.name", "task.protocol") and varies(k)]


def group_key(record: dict, extra: tuple[str, ...] = ()) -> tuple:
    """(mixer, protocol, values of ``extra`` keys): the runs that differ only by seed; the mixer by its
    label (``gla×2+attention`` for a hybrid stack: ``harness.run.records.mixer_label``)."""
    flat = flatten(record["config"])
    return (mixer_label(record["config"]), str(record["config"]["task"].get("protocol", "-")),
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


def write_table(df: pd.DataFrame, out_dir: Path, stem: str, header: str, latex: str | None = None) -> list[Path]:
    """``df`` as ``<stem>.md`` (under ``header``), ``.csv`` and ``.tex`` in ``out_dir``. Markdown and
    CSV keep every row and column (for analysis); the LaTeX table is for papers (``latex_table``):
    the columns and display names that ``conf/report.yaml`` lists under ``latex.tables.<latex>``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.md", out_dir / f"{stem}.csv", out_dir / f"{stem}.tex"]
    paths[0].write_text(header + "\n\n" + df.to_markdown(index=False) + "\n")
    df.to_csv(paths[1], index=False)
    paths[2].write_text(latex_table(df, settings()["latex"]["tables"].get(latex or "")))
    return paths


# ----------------------------------------------------------------------------------------------------
# Print settings (conf/report.yaml) and the style every figure shares

REPORT_CONF = Path(CONF_DIR) / "report.yaml"


@functools.cache
def settings() -> dict:
    """``conf/report.yaml``: figure sizes and fonts, the LaTeX tables' columns and names."""
    return yaml.safe_load(REPORT_CONF.read_text())


def figure_width(stem: str) -> float:
    """Width in inches of the figure ``stem`` in print: single column (3.25 in) or the full width of a
    two-column page (6.75 in), as ``conf/report.yaml`` chooses per figure (double when not listed)."""
    fig = settings()["figure"]
    return fig["single_column_in"] if fig["widths"].get(stem, "double") == "single" else fig["double_column_in"]


def new_figure(stem: str, rows: int = 1, columns: int = 1, **kwargs) -> tuple[plt.Figure, object]:
    """``plt.subplots(rows, columns, squeeze=False)`` at the print width of ``stem`` and a height of
    ``panel_height_in`` per row of panels."""
    height = settings()["figure"]["panel_height_in"] * rows
    return plt.subplots(rows, columns, figsize=(figure_width(stem), height), squeeze=False, **kwargs)


def _rc() -> dict:
    pt = settings()["figure"]["font_pt"]
    return {"pdf.fonttype": 42, "ps.fonttype": 42,  # TrueType in PDFs, never Type 3 bitmaps
            "svg.hashsalt": "mixbench", "path.simplify": False,  # the same bytes every time
            "font.size": pt, "axes.titlesize": pt, "axes.labelsize": pt, "figure.titlesize": pt,
            "xtick.labelsize": pt - 1, "ytick.labelsize": pt - 1, "legend.fontsize": pt - 1,
            "legend.title_fontsize": pt - 1, "lines.linewidth": 1.2, "lines.markersize": 3.5,
            "axes.linewidth": 0.6, "grid.linewidth": 0.4, "savefig.dpi": settings()["figure"]["dpi"]}


matplotlib.rcParams.update(_rc())  # every figure a report draws: print sizes, TrueType fonts


# Okabe & Ito's colour-blind-safe palette (yellow left out: too faint on white), ordered so that
# neighbours in the registry differ in hue; grey stays free for reference lines
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#E69F00", "#CC79A7", "#56B4E9", "#000000")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "p", "*", "h", "d", "H", "1", "+", "x", "8", "2", "3", "4",
           "|", "_")  # filled shapes first; the octagon (8) where its colour has no circle (it reads as one)
LINESTYLES = ("-", (0, (5, 2)), (0, (1, 1.5)), (0, (5, 1.5, 1, 1.5)))  # solid, dashed, dotted, dash-dot
BAR_HATCHES = ("", "////", "....", "xx")  # a bar's hatch for each of LINESTYLES (solid, dashed, dotted, dash-dot)
REFERENCE_COLOR = "0.45"  # reference lines (baselines, 1/K): grey, never a mixer's colour
SPREAD = "band: min-max over seeds"  # what every figure's shaded band shows (its legend says so)


def mixer_order() -> list[str]:
    """Every registered mixer, in the registry's order: the one home of which style each mixer gets."""
    return mixers.available()


def mixer_style(name: str) -> dict[str, object]:
    """The colour, marker and line style of mixer ``name`` in every figure: the i-th mixer of the
    registry gets colour i mod 7, marker i mod 23 and line style i div 7, so that no two registered
    mixers share all three; a name the registry does not know gets one of the 46 - n styles past the
    registry's n (by a checksum of the name: the same in every figure, never a registered mixer's)."""
    order = mixer_order()
    cycle = len(MARKERS) * 2  # 46 distinct (colour, marker, line style) triples
    i = order.index(name) if name in order else len(order) + zlib.crc32(name.encode()) % (cycle - len(order))
    return {"color": PALETTE[i % len(PALETTE)], "marker": MARKERS[i % len(MARKERS)],
            "linestyle": LINESTYLES[(i // len(PALETTE)) % len(LINESTYLES)]}


def mixer_of(label: str) -> str:
    """The mixer a legend label names: ``attention, position=nope`` -> ``attention``; a variant
    ``tmm-fft`` (the scaling benchmark's) -> ``tmm``."""
    name = label.partition(",")[0].partition(" (")[0].strip()
    prefix = name.partition("-")[0]
    return prefix if name not in mixer_order() and prefix in mixer_order() else name


def series_styles(labels: list[str]) -> dict[str, dict[str, object]]:
    """A style (``color``, ``marker``, ``linestyle``, ``markerfacecolor``) per legend label: the mixer's
    own (``mixer_style``); a second, third ... variant of one mixer in the figure (sorted by label)
    keeps its colour and marker, hollow, with the next line style."""
    out = {}
    by_mixer: dict[str, list[str]] = defaultdict(list)
    for label in sorted(set(labels), key=sort_key):
        by_mixer[mixer_of(label)].append(label)
    for mixer, variants in by_mixer.items():
        base = mixer_style(mixer)
        start = LINESTYLES.index(base["linestyle"])
        for k, label in enumerate(variants):
            out[label] = {**base, "linestyle": LINESTYLES[(start + k) % len(LINESTYLES)],
                          "markerfacecolor": base["color"] if k == 0 else "white"}
    return out


def mixer_colors(labels: list[str]) -> dict[str, str]:
    """One colour per legend label, the mixer's own (``series_styles``)."""
    return {label: style["color"] for label, style in series_styles(labels).items()}


def series_labels(series: list[tuple], extra: tuple[str, ...] | list[str]) -> dict[tuple, str]:
    """``(mixer, values of extra)`` -> legend label: the mixer and only the options that take more
    than one value among that mixer's series in this figure (an option that is constant for a mixer,
    or that it does not have, is left out: ``attention, position=nope``, ``tmm``)."""
    by_mixer: dict[str, list[tuple]] = defaultdict(list)
    for s in series:
        by_mixer[s[0]].append(s)
    out = {}
    for s in series:
        shown = [i for i in range(len(extra)) if s[1 + i] is not None
                 and len({repr(t[1 + i]) for t in by_mixer[s[0]]}) > 1]
        out[s] = s[0] + "".join(f", {extra[i].split('.')[-1]}={s[1 + i]}" for i in shown)
    return out


def plot_series(ax, xs: list[float], per_seed: list[list[float]], style: dict, label: str, scale: float = 1.0,
                band: bool = True) -> None:
    """The mean over seeds of ``per_seed`` (one list of y per seed, over ``xs``) as a line with
    markers, and where there are several seeds their spread as a band (``SPREAD``: min to max)."""
    ys = [scale * sum(col) / len(col) for col in zip(*per_seed)]
    ax.plot(xs, ys, label=label, markevery=max(1, len(xs) // 10), **style)
    if band and len(per_seed) > 1 and len(xs) == 1:  # one point: the spread as an error bar
        lo, hi = scale * min(v[0] for v in per_seed), scale * max(v[0] for v in per_seed)
        ax.errorbar(xs, ys, yerr=[[ys[0] - lo], [hi - ys[0]]],
                    color=style["color"], linewidth=0.8, capsize=2)
    elif band and len(per_seed) > 1:
        ax.fill_between(xs, [scale * min(col) for col in zip(*per_seed)], [scale * max(col) for col in zip(*per_seed)],
                        color=style["color"], alpha=0.18, linewidth=0)


def tidy_log_axis(ax, which: str = "x") -> None:
    """Readable ticks on a log axis: labels on the decades only (none on minor ticks, which overlap
    when the axis spans less than a few decades); over less than two decades also at 2 and 5 times
    a decade (below one decade at 2, 3, 4, 5 and 7 times), as ``2e11``."""
    axis = ax.xaxis if which == "x" else ax.yaxis
    lo, hi = ax.get_xlim() if which == "x" else ax.get_ylim()
    if lo <= 0 or hi <= lo:
        return
    axis.set_minor_formatter(NullFormatter())
    if math.log10(hi / lo) < 2:
        subs = (1.0, 2.0, 5.0) if math.log10(hi / lo) >= 1 else (1.0, 2.0, 3.0, 4.0, 5.0, 7.0)
        axis.set_major_locator(LogLocator(base=10, subs=subs))
        axis.set_major_formatter(FuncFormatter(_short_number))
    else:
        axis.set_major_locator(LogLocator(base=10))
        axis.set_major_formatter(LogFormatterSciNotation(base=10))


def _short_number(value: float, _pos=None) -> str:
    """``2e11``, ``1e12``, ``0.05``, ``300``: short tick labels."""
    if value == 0:
        return "0"
    exponent = math.floor(math.log10(abs(value)) + 1e-9)
    if -2 <= exponent <= 3:
        return f"{value:g}"
    return f"{value / 10 ** exponent:g}e{exponent}"


def legend_below(fig: plt.Figure, title: str | None = SPREAD, columns: int | None = None) -> None:
    """One legend for every panel, below the panels (outside the data; each label once), with
    ``title`` (by default what the shaded bands show)."""
    entries: dict[str, object] = {}
    for ax in fig.axes:
        for handle, name in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(name, handle)
    if not entries:
        return
    width = fig.get_size_inches()[0]
    pt = settings()["figure"]["font_pt"] - 1  # the legend's font
    entry_in = 0.55 * pt / 72 * max(len(name) for name in entries) + 0.6  # text (about 0.55 em a character), handle, gap
    columns = columns or max(1, min(len(entries), int(width // entry_in)))  # never wider than the figure
    fig.legend(list(entries.values()), list(entries), loc="upper center", bbox_to_anchor=(0.5, 0.0),
               ncol=columns, title=title, frameon=False, handlelength=2.6, columnspacing=1.2)


def save_figure(fig, out_dir: Path, stem: str) -> list[Path]:
    """``fig`` as ``<stem>.png`` and ``.pdf`` in ``out_dir`` (then closed). PDFs carry TrueType fonts
    and no creation date, so regenerating a report leaves an unchanged figure byte-identical."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.pdf"]
    for p in paths:
        metadata = {"CreationDate": None, "ModDate": None} if p.suffix == ".pdf" else {"Software": None}
        fig.savefig(p, bbox_inches="tight", pad_inches=0.02, metadata=metadata)
    plt.close(fig)
    return paths


def sort_key(value: object) -> tuple:
    """A key that sorts numbers as numbers and text as text, element-wise in tuples: d_model 32, 64,
    128 (not 128, 32, 64); numbers inside text too (``L8`` before ``L16``); None first."""
    if isinstance(value, (tuple, list)):
        return tuple(sort_key(v) for v in value)
    if value is None:
        return (0, 0, "")
    if isinstance(value, bool):
        return (1, int(value), "")
    if isinstance(value, (int, float)):
        return (1, float(value), "")
    parts = re.split(r"(\d+)", str(value))  # text with numbers in it sorts by them: d_model=64 before d_model=128
    return (2, 0, tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts))


# ----------------------------------------------------------------------------------------------------
# LaTeX tables for papers

MISSING = ("", "-", "nan", "None", "NaN")
NUMBER = re.compile(r"^[-+]?(\d[\d,]*\.?\d*(e[-+]?\d+)?|\.\d+)( ± \d[\d,]*\.?\d*(e[-+]?\d+)?)?( <=1/K)?$")
BIG_O = re.compile(r"O\([^()]*\)")
TEXT_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                "±": r"$\pm$", "×": r"$\times$", "≥": r"$\geq$", "≤": r"$\leq$", "—": "---", "–": "--",
                "<": r"$<$", ">": r"$>$", "|": r"$|$"}


def latex_math(expression: str) -> str:
    """A complexity such as ``O(n^2)``, ``O(n log n)``, ``O(n sqrt n)`` as LaTeX math."""
    body = expression.replace("sqrt n", r"\sqrt{n}").replace("log", r"\log")
    body = re.sub(r"\^(\w+)", r"^{\1}", body)
    return "$" + re.sub(r"(?<=\S) (?=\S)", r"\\,", body) + "$"


def latex_text(value: object) -> str:
    """A cell or a header as LaTeX: special characters escaped, ``>=`` / ``<=`` as relations,
    complexities ``O(...)`` as math, a missing value (``nan``, None, ``-``, empty) as an em dash."""
    if isinstance(value, float) and not math.isnan(value) and value.is_integer():
        value = int(value)  # an integer column that pandas made float by a missing cell
    text = "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)
    if text.strip() in MISSING:
        return "---"
    out, last = [], 0
    for match in BIG_O.finditer(text):
        out.append(_escape(text[last:match.start()]))
        out.append(latex_math(match.group()))
        last = match.end()
    return "".join(out) + _escape(text[last:])


def _escape(text: str) -> str:
    text = text.replace(">=", "≥").replace("<=", "≤")
    return "".join(TEXT_ESCAPES.get(c, c) for c in text)


def _pattern(pattern: str) -> re.Pattern:
    return re.compile("^" + "(.*)".join(re.escape(part) for part in pattern.split("*")) + "$")


def is_setting(column: str) -> bool:
    """Whether ``column`` names a config key (``mixer.position``), a setting that tells rows apart."""
    return re.fullmatch(r"[a-z_]+(\.[a-z_0-9]+)+", column) is not None


def chosen_columns(columns: list[str], spec: dict | None) -> tuple[list[str], dict[str, str]]:
    """The columns ``spec`` keeps, in its order (patterns; ``settings``: every config key), and each
    one's display name (``spec["names"]``; a config key shows as its last part)."""
    names = {c: c.split(".")[-1] if is_setting(c) else c for c in columns}
    if not spec:
        return list(columns), names
    kept: list[str] = []
    for pattern in spec.get("columns", []):
        matches = [c for c in columns if is_setting(c)] if pattern == "settings" else \
            [c for c in columns if _pattern(pattern).match(c)]
        kept += [c for c in matches if c not in kept]
    for pattern, name in (spec.get("names") or {}).items():
        for c in kept:
            if m := _pattern(pattern).match(c):
                names[c] = name.replace("*", m.group(1)) if m.groups() else name
    return kept, names


def latex_table(df: pd.DataFrame, spec: dict | None = None) -> str:
    """``df`` as a booktabs ``tabular`` at ``\\small`` with 4 pt column separation, that compiles:
    the columns ``spec`` chooses (see ``chosen_columns``) without those that are empty in every row,
    numbers right-aligned, text escaped, missing cells as an em dash. A table estimated wider than ``latex.text_width_pt`` is
    wrapped in ``\\resizebox{\\textwidth}`` (needs graphicx), with a comment saying so and why."""
    columns, names = chosen_columns([str(c) for c in df.columns], spec)
    cells = {c: [latex_text(v) for v in df[c].tolist()] for c in columns} if len(df) else {c: [] for c in columns}
    columns = [c for c in columns if any(v != "---" for v in cells[c])] if len(df) else columns
    aligns = "".join("r" if numeric(df[c].tolist()) else "l" for c in columns)
    lines = [" & ".join(latex_text(names[c]) for c in columns) + r" \\"]
    lines += [" & ".join(cells[c][i] for c in columns) + r" \\" for i in range(len(df))]
    body = "\n".join([r"{\small\setlength{\tabcolsep}{4pt}%", rf"\begin{{tabular}}{{{aligns or 'l'}}}", r"\toprule",
                      lines[0], r"\midrule", *lines[1:], r"\bottomrule", r"\end{tabular}}"])
    width = estimated_width_pt(columns, names, cells)
    limit = settings()["latex"]["text_width_pt"]
    if width > limit:
        return (f"% resized to \\textwidth (needs \\usepackage{{graphicx}}): {len(columns)} columns, about {width:.0f} pt "
                f"wide at \\small, wider than {limit} pt; conf/report.yaml (latex.tables) picks fewer columns\n"
                f"\\resizebox{{\\textwidth}}{{!}}{{%\n{body}%\n}}\n")
    return body + "\n"


def numeric(values: list) -> bool:
    """Whether a column holds numbers (``mean ± std``, ``1.4e+11``, ``52,453``), right-aligned: at
    least half of its present cells are numbers (the rest say ``not reached (0/2)`` and the like)."""
    present = [str(v).strip() for v in values if latex_text(v) != "---"]
    return bool(present) and 2 * sum(bool(NUMBER.match(v)) for v in present) >= len(present)


def estimated_width_pt(columns: list[str], names: dict[str, str], cells: dict[str, list[str]]) -> float:
    """A rough width of the table in points at ``\\small`` (9 pt): per column its longest cell or
    header (4.8 pt per visible character: digits are 4.6 pt, capitals wider) plus the column
    separation (2 x 4 pt)."""
    def visible(text: str) -> int:
        text = text.replace(r"$\pm$", "+-").replace(r"\,", " ").replace(r"\sqrt", "v").replace(r"\log", "log")
        return len(re.sub(r"\\[a-z]+\{\}|[\\${}]", "", text))
    return sum(4.8 * max([visible(latex_text(names[c]))] + [visible(v) for v in cells[c]]) + 8 for c in columns)


def _in_distribution_metrics(records: list[dict]) -> list[str]:
    """The ``*_in`` metrics of the finished runs' learning curves, loss first."""
    keys = {k for r in records if r["status"] == "ok" for p in r["curve"] for k in p if k.endswith("_in")}
    return sorted(keys, key=lambda k: (k != "loss_in", k))


def generic_table(records: list[dict]) -> pd.DataFrame:
    """One row per (mixer, settings that vary): parameters, how many runs finished, every final
    metric of every evaluation set (mean ± std over seeds; accuracies and exact match in %), speed.
    Works for any task."""
    extra = tuple(varying_keys(records))
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[group_key(r, extra)].append(r)
    rows = []
    for key, runs in sorted(groups.items(), key=lambda kv: sort_key(kv[0])):
        ok = [r for r in runs if r["status"] == "ok"]
        first = (ok or runs)[0]
        row = {"mixer": key[0], **dict(zip(extra, key[2:])), "params": first.get("params", {}).get("total"),
               "seeds": ",".join(str(r["config"]["seed"]) for r in sorted(runs, key=lambda r: r["config"]["seed"])),
               "runs": status_note(runs)}
        for name, metrics in (ok[0]["final"]["eval"].items() if ok else []):
            for metric in metrics:  # fractions in %, as in every figure
                values = [r["final"]["eval"][name][metric] for r in ok]
                row[f"{metric} {name} (%)" if percent_scale(metric) != 1 else f"{metric} {name}"] = (
                    percent_mean_std(values) if percent_scale(metric) != 1 else mean_std(values, digits=4))
        row.update(memory_cells(ok))
        row["tokens/s"] = f"{mean([r['throughput']['tokens_per_s'] for r in ok]):,.0f}" if ok else "-"
        row["train time (s)"] = f"{mean([r['timing']['train_s'] for r in ok]):.0f}" if ok else "-"
        rows.append(row)
    return pd.DataFrame(rows)


def plot_learning_curves(records: list[dict], out_dir: Path, title: str) -> list[Path]:
    """Each in-distribution metric of the learning curve against training steps: a line per series
    (mixer and the settings that vary), the mean over seeds, their spread as a band; accuracies in %."""
    metrics = _in_distribution_metrics(records)
    extra = tuple(varying_keys(records))
    ok = [r for r in records if r["status"] == "ok"]
    by_series: dict[tuple, list[dict]] = defaultdict(list)
    for r in ok:
        key = group_key(r, extra)
        by_series[(key[0], *key[2:])].append(r)
    labels = series_labels(list(by_series), extra)
    styles = series_styles(list(labels.values()))
    fig, axes = new_figure("learning_curves", 1, max(1, len(metrics)))
    for ax, metric in zip(axes[0], metrics):
        for series, runs in sorted(by_series.items(), key=lambda kv: sort_key(kv[0])):
            xs, per_seed = aligned_curves(runs, "step", metric)
            plot_series(ax, xs, per_seed, styles[labels[series]], labels[series], scale=percent_scale(metric))
        name = metric.removesuffix("_in")
        if metric == "loss_in":
            ax.set_yscale("log")
        ax.set_xlabel("training step")
        ax.set_ylabel(f"{name}{' (%)' if percent_scale(metric) != 1 else ''}, in-distribution")
        ax.grid(alpha=0.3, which="both")
        if ax.get_yscale() == "log":
            tidy_log_axis(ax, "y")
    fig.suptitle(title)
    fig.tight_layout()
    legend_below(fig)
    return save_figure(fig, out_dir, "learning_curves")


PERCENT_METRICS = ("accuracy", "exact_match")  # fractions that every figure and table shows in %


def percent_scale(metric: str) -> float:
    """100 for a fraction shown in % (``accuracy_in``, ``exact_match``), else 1."""
    return 100.0 if metric.removesuffix("_in") in PERCENT_METRICS else 1.0


def aligned_curves(runs: list[dict], x: str, metric: str) -> tuple[list[float], list[list[float]]]:
    """The learning curves of ``runs`` (seeds of one series) at their common evaluations: x values
    of the first run and each run's ``metric`` there (cut to the shortest curve)."""
    curves = [[p for p in r["curve"] if metric in p] for r in runs]
    n = min(len(c) for c in curves)
    return [p[x] for p in curves[0][:n]], [[p[metric] for p in c[:n]] for c in curves]


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
