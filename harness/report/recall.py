"""The recall benchmarks' report (MQAR): tables and Zoology's figures, titled by the protocol
(``PROTOCOLS``: the Based paper's mixture protocol, the Zoology paper's one-setting protocol, and
the window and state-size sweeps).

Zoology reports each model (mixer, width) at its best learning rate: of the learning rates swept,
the one whose final accuracy averaged over the whole test grid (and over seeds) is highest.

- ``table``: one row per (mixer, d_model) at its best learning rate: parameters, accuracy per test
  setting (mean ± std over seeds), mean accuracy, the learning rates tried;
- ``lr_sweep``: every (mixer, d_model, learning rate) with its mean accuracy;
- ``accuracy_vs_d_model``: Zoology's figure, accuracy against model dimension, one panel per
  sequence length, one line per mixer (line style per number of key-value pairs when a length
  has several);
- ``accuracy_vs_state``: the Based paper's figure, mean accuracy against each model's decoding
  state (values after the longest input, all layers; the record's ``state``).

Every table and figure shows the trivial references: ``1/K`` (answering each query with one of the
K values in its context) and ``2/V`` (uniform over the V/2 value tokens); cells at or below 1/K are
flagged ``<=1/K``. A row whose runs' in-distribution accuracy still rose by more than
``RISING_MARGIN`` over the last ``RISING_EVALS`` evaluations (and is below 99%, where Zoology stops)
is marked pre-convergence: its number is a lower bound of what the budget would reach if longer.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pandas as pd

from harness.run.records import mixer_label
from harness.report.kit import (REFERENCE_COLOR, SPREAD, flatten, hardware_label, memory_cells, legend_below, new_figure,
                                percent_mean_std, plot_series, save_figure, series_labels, series_styles, sort_key,
                                status_note, tidy_log_axis, varying_keys, write_table)

TASKS = ("mqar",)  # the tasks whose runs this module reports

SWEPT = ("model.d_model", "train.lr")
DODGE = 0.3  # octaves: the widest sideways offset of a mixer's points in accuracy_vs_d_model
# each recall experiment's protocol and its source (conf/experiment/<benchmark>.yaml says more)
PROTOCOLS = {
    "recall_benchmark": "the Based paper's MQAR mixture protocol (arXiv 2402.18668, Figure 2; zoology's arxiv24_based_figure2)",
    "recall_zoology_figure2": "the Zoology paper's MQAR protocol (arXiv 2312.04927, Figure 2: one setting per run, zero filler)",
    "recall_window_sweep": "sliding-window sizes under the Based paper's mixture protocol (arXiv 2402.18668, Figure 2)",
    "recall_state_sweep": "state sizes under the Based paper's mixture protocol (arXiv 2402.18668, Figure 2)",
}
RISING_EVALS = 3        # the last evaluations looked at for pre-convergence
RISING_MARGIN = 0.01    # accuracy gained over them (absolute) that counts as still rising
CONVERGED = 0.99        # Zoology's early-stopping accuracy


def protocol(benchmark: str) -> str:
    return PROTOCOLS.get(benchmark, "MQAR")


def one_over_k(name: str) -> float:
    """Answering with one of the K values in context: ``1/K`` of the queries right."""
    return 1.0 / parse_setting(name)[1]


def two_over_v(vocab_size: int) -> float:
    """Uniform over the value tokens ``[V/2, V)``: ``2/V``."""
    return 2.0 / vocab_size


def flagged(values: list[float], floor: float) -> str:
    """``percent_mean_std(values)``, flagged ``<=1/K`` when the mean is at or below ``floor``."""
    text = percent_mean_std(values)
    return f"{text} <=1/K" if values and mean(values) <= floor + 1e-12 else text


def still_rising(run: dict) -> float | None:
    """The in-distribution accuracy gained over the last ``RISING_EVALS`` evaluations when that is
    more than ``RISING_MARGIN`` and the run is below ``CONVERGED``; else None."""
    accs = [p["accuracy_in"] for p in run.get("curve", []) if "accuracy_in" in p]
    if len(accs) < RISING_EVALS or accs[-1] >= CONVERGED:
        return None
    gain = accs[-1] - accs[-RISING_EVALS]
    return gain if gain > RISING_MARGIN else None


def convergence_note(runs: list[dict]) -> str:
    gains = [g for g in (still_rising(r) for r in runs) if g is not None]
    if not runs:
        return "-"
    if not gains:
        return "yes"
    return (f"pre-convergence ({len(gains)}/{len(runs)} runs still rising: +{100 * max(gains):.1f} pts "
            f"over the last {RISING_EVALS} evals)")


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
        key = (mixer_label(r["config"]), width(r), *(flat.get(k) for k in extra))
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


def reference_rows(records: list[dict], sets: list[str]) -> list[dict]:
    """The trivial references as table rows: 1/K and 2/V on every test setting."""
    vocab = records[0]["task_summary"]["vocab_size"]
    k_row = {"mixer": "reference: 1/K (a value from the context)"}
    v_row = {"mixer": "reference: 2/V (uniform over values)"}
    for name in sets:
        k_row[f"acc {name} (%)"] = f"{100 * one_over_k(name):.2f}"
        v_row[f"acc {name} (%)"] = f"{100 * two_over_v(vocab):.2f}"
    if sets:
        k_row["mean acc (%)"] = f"{100 * mean([one_over_k(n) for n in sets]):.2f}"
        v_row["mean acc (%)"] = f"{100 * two_over_v(vocab):.2f}"
    return [k_row, v_row]


def tables(records: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    extra, groups = model_groups(records)
    rows, sweep = [], []
    sets_seen: list[str] = []
    for key, by_lr in sorted(groups.items(), key=lambda kv: sort_key(kv[0])):
        mixer, d_model = key[0], key[1]
        lr, ok = best_lr(by_lr)
        every = [r for runs in by_lr.values() for r in runs]
        first = (ok or every)[0]
        row = {"mixer": mixer, **dict(zip(extra, key[2:])), "d_model": d_model,
               "params": first.get("params", {}).get("total"), "mixer params": first.get("params", {}).get("mixer"),
               "best lr": lr if lr is not None else "-", "runs": status_note(every)}
        sets = list(ok[0]["final"]["eval"]) if ok else []
        for name in sets:
            row[f"acc {name} (%)"] = flagged([r["final"]["eval"][name]["accuracy"] for r in ok], one_over_k(name))
            sets_seen += [name] if name not in sets_seen else []
        floor = mean([one_over_k(n) for n in sets]) if sets else 0.0
        row["mean acc (%)"] = flagged([r["final"]["accuracy_all"] for r in ok], floor)
        row["converged"] = convergence_note(ok)
        row["state (values)"] = (first.get("state") or {}).get("values", "-")
        row.update(memory_cells(ok))  # at the best learning rate
        row["lrs tried"] = ", ".join(f"{k:g}" for k in sorted(by_lr))
        rows.append(row)
        for each, runs in sorted(by_lr.items()):
            done = [r for r in runs if r["status"] == "ok"]
            sweep.append({"mixer": mixer, **dict(zip(extra, key[2:])), "d_model": d_model, "lr": each,
                          "mean acc (%)": percent_mean_std([r["final"]["accuracy_all"] for r in done]),
                          "converged": convergence_note(done),
                          "best": "yes" if each == lr else "", "runs": status_note(runs)})
    sets_seen.sort(key=parse_setting)
    references = pd.DataFrame(reference_rows(records, sets_seen) if records else [])
    models = pd.DataFrame(rows)
    table = pd.concat([references, models], ignore_index=True).astype(object)
    table = table[list(models.columns) if len(models.columns) else list(table.columns)]
    table.iloc[:len(references)] = table.iloc[:len(references)].fillna("")  # the references' other columns: blank
    return table, pd.DataFrame(sweep)


def plot_accuracy_vs_d_model(records: list[dict], out_dir: Path, title: str) -> list[Path]:
    """Zoology's figure: best-learning-rate accuracy (%) against d_model, a panel per test setting
    (sequence length, key-value pairs), a line per mixer (mean over seeds, their spread as a band),
    1/K and 2/V as grey reference lines. Each mixer's points sit dodged sideways (up to ``DODGE``
    octaves either side of their width, in the legend's order) so that mixers at one width do not
    hide each other; the ticks mark the widths."""
    extra, groups = model_groups(records)
    best = {key: best_lr(by_lr)[1] for key, by_lr in groups.items()}
    best = {key: runs for key, runs in best.items() if runs}
    sets = sorted({s for runs in best.values() for s in runs[0]["final"]["eval"]}, key=parse_setting)
    lines = sorted({(key[0], *key[2:]) for key in best}, key=sort_key)
    labels = series_labels(lines, extra)
    styles = series_styles(list(labels.values()))
    widths = sorted({key[1] for key in best})
    vocab = records[0]["task_summary"]["vocab_size"]
    dodge = {line: 2 ** (DODGE * (2 * j / (len(lines) - 1) - 1) if len(lines) > 1 else 0.0) for j, line in enumerate(lines)}
    columns = min(len(sets), 5) or 1
    fig, axes = new_figure("accuracy_vs_d_model", -(-len(sets) // columns), columns, sharey=True)
    for i, ax in enumerate(axes.flat):
        if i >= len(sets):
            ax.set_visible(False)
            continue
        name = sets[i]
        for line in lines:
            points = sorted(((key[1], runs) for key, runs in best.items() if (key[0], *key[2:]) == line
                             and name in runs[0]["final"]["eval"]), key=lambda p: p[0])
            if points:
                per_seed = [[r["final"]["eval"][name]["accuracy"] for r in runs] for _, runs in points]
                width_runs = min(len(v) for v in per_seed)
                per_seed = [[v[j] for v in per_seed] for j in range(width_runs)]
                plot_series(ax, [d * dodge[line] for d, _ in points], per_seed, styles[labels[line]], labels[line],
                            scale=100)
        ax.axhline(100 * one_over_k(name), color=REFERENCE_COLOR, linewidth=0.8, linestyle="--",
                   label="1/K (a value from the context)")
        ax.axhline(100 * two_over_v(vocab), color=REFERENCE_COLOR, linewidth=0.8, linestyle=":",
                   label="2/V (uniform over values)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(widths, [str(d) for d in widths])
        ax.minorticks_off()
        ax.set_ylim(-3, 103)
        ax.set_xlabel("model dimension")
        length, kv = parse_setting(name)
        ax.set_title(f"L = {length}, {kv} pairs")
        ax.grid(alpha=0.3)
        if i % columns == 0:
            ax.set_ylabel("accuracy (%)")
    fig.suptitle(title)
    fig.tight_layout()
    legend_below(fig, title=f"best learning rate per model; {SPREAD}")
    return save_figure(fig, out_dir, "accuracy_vs_d_model")


def plot_accuracy_vs_state(records: list[dict], out_dir: Path, title: str) -> list[Path]:
    """The Based paper's figure: best-learning-rate mean accuracy (test grid, %) against decoding
    state (values, all layers, after the longest input), a point per model and seed, a style per
    mixer, with the trivial references. Records without a ``state`` (written before it) are left out."""
    extra, groups = model_groups(records)
    best = {key: runs for key, runs in ((k, best_lr(v)[1]) for k, v in groups.items()) if runs and runs[0].get("state")}
    if not best:
        return []
    names = sorted({key[0] for key in best})
    styles = series_styles(names)
    fig, axes = new_figure("accuracy_vs_state")
    ax = axes[0][0]
    for name in names:
        style = styles[name]
        points = sorted((r["state"]["values"], 100 * r["final"]["accuracy_all"])
                        for key, runs in best.items() if key[0] == name for r in runs)
        ax.scatter([x for x, _ in points], [y for _, y in points], color=style["color"], marker=style["marker"], s=16,
                   label=name)
    sets = sorted({s for runs in best.values() for s in runs[0]["final"]["eval"]}, key=parse_setting)
    vocab = records[0]["task_summary"]["vocab_size"]
    ax.axhline(100 * mean([one_over_k(s) for s in sets]), color=REFERENCE_COLOR, linewidth=0.8, linestyle="--",
               label="1/K, mean over the grid")
    ax.axhline(100 * two_over_v(vocab), color=REFERENCE_COLOR, linewidth=0.8, linestyle=":", label="2/V")
    ax.set_xscale("log")
    ax.set_ylim(-3, 103)
    ax.set_xlabel(f"decoding state (values after {next(iter(best.values()))[0]['state']['length']} tokens)")
    ax.set_ylabel("accuracy, test grid (%)")
    ax.grid(alpha=0.3)
    tidy_log_axis(ax, "x")
    ax.set_title(title.split("\n")[-1])
    fig.tight_layout()
    legend_below(fig, title="a point per run (seed), best learning rate", columns=3)
    return save_figure(fig, out_dir, "accuracy_vs_state")


def describe(records: list[dict]) -> str:
    r = records[0]
    task, train, model = r["task_summary"], r["config"]["train"], r["config"]["model"]
    settings = ", ".join(f"({L}, {kv})" for L, kv in task["train_settings"])
    lrs = sorted({x["config"]["train"]["lr"] for x in records})
    return (f"Hardware: {hardware_label(r['environment'])}; precision {train['precision']}. "
            f"MQAR as Zoology generates it: vocabulary {task['vocab_size']}, trained on (seq_len, kv pairs) "
            f"{settings} with weights {task['train_weights']} (one setting per batch), tested on "
            f"{len(task['test_settings'])} settings. Backbone: {model['n_layers']} layers, "
            f"{'no MLP' if not model['mlp_ratio'] else 'MLP x' + str(model['mlp_ratio'])}, "
            f"{'tied' if model['tie_embeddings'] else 'untied'} LM head, short convolution "
            f"{shorts(records)}, init {model.get('init', 'reference')}. "
            f"Training: {train['steps']} steps x batch {train['batch_size']}, AdamW, warmup {train['warmup_steps']}, "
            f"cosine to {train['min_lr_ratio']}x; learning rates {', '.join(f'{x:g}' for x in lrs)}, each model "
            f"reported at the one with the best mean test accuracy (Zoology's selection). Accuracy: fraction of "
            f"queries answered, mean ± std over seeds; references 1/K and 2/V in the first rows, cells at "
            f"or below 1/K flagged <=1/K, rows still improving at the end marked pre-convergence.")


def shorts(records: list[dict]) -> str:
    """The short-convolution kernel sizes by mixer: ``k=3 (attention, tmm), off (mamba)``."""
    by_size: dict[int, set[str]] = defaultdict(set)
    for r in records:
        by_size[r["config"]["model"].get("short_conv", 0)].add(mixer_label(r["config"]))
    return ", ".join(f"{'off' if k == 0 else f'k={k}'} ({', '.join(sorted(v))})" for k, v in sorted(by_size.items()))


def report(records: list[dict], benchmark: str, profile: str, out_dir: Path) -> list[Path]:
    header = f"# {benchmark}: {protocol(benchmark)} ({profile} profile)\n\n{describe(records)}"
    table, sweep = tables(records)
    written = write_table(table, out_dir, "table", header, latex="recall.table")
    written += write_table(sweep, out_dir, "lr_sweep", header + "\n\nEvery learning rate of the sweep.",
                           latex="recall.lr_sweep")
    if any(r["status"] == "ok" for r in records):
        title = f"{benchmark}, {hardware_label(records[0]['environment'])}"
        written += plot_accuracy_vs_d_model(records, out_dir, title)
        written += plot_accuracy_vs_state(records, out_dir, title)
    return written
