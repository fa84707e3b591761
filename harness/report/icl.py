"""The in-context learning benchmark's report.

Regression (Garg et al. 2022):

- ``regression_table``: per mixer (and the settings that vary: ``task.curriculum``,
  ``model.position``, ...) the squared error / d at a few numbers of in-context examples (mean ±
  std over seeds), its mean over the prompt, and how many seeds left the zero-predictor plateau
  (``PLATEAU``: the error at the largest k below 0.9 x the zero predictor's on the same prompts);
  then one row per baseline the records carry (least squares, averaging, 3-nearest-neighbours,
  optimal one-step gradient descent, zero), on the same prompts;
- ``regression_error_vs_examples``: Garg et al.'s figure, squared error / d against the number of
  in-context examples, one line per mixer, the baselines as reference lines.

Language (Akyürek et al. 2024, RegBench):

- ``language_table``: per mixer (and ``max_len``, ``exclude_eval_automata``, ``train_automata``
  where they vary) accuracy averaged per sequence and per token (RegBench's: correct tokens over
  scored tokens of the whole set), TVD and L1 (= 2 TVD, what RegBench logs), then one row per
  in-context n-gram baseline (orders 1-4, RegBench's back-off model) scored on the evaluation set
  the records name (the frozen copy when there is one, else regenerated from the task config;
  computed once and cached in the report folder as ``ngram_baselines_<set id>.json``);
- ``language_learning_curves``: accuracy and TVD against training FLOPs, the n-grams as
  horizontal reference lines.
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pandas as pd
from matplotlib.ticker import MaxNLocator

import tasks
from harness.run.records import mixer_label
from harness.report.kit import (REFERENCE_COLOR, flatten, hardware_label, memory_cells, legend_below, mean, mean_std, new_figure,
                                plot_series, save_figure, series_labels, series_styles, sort_key,
                                status_note, tidy_log_axis, varying_keys, write_table)
from harness.run import eval_sets as frozen

TASKS = ("icl_regression", "icl_language")  # the tasks whose runs this module reports
PLATEAU = 0.9  # a seed left the zero-predictor plateau if its error at the largest k is below PLATEAU x zero's
BASELINES = (("lsq", "least squares", "--", ""), ("avg", "averaging", "-.", "s"),
             ("knn", "3-nearest neighbours", (0, (5, 2)), "^"), ("gd", "one-step gradient descent", ":", "v"),
             ("zero", "zero predictor", (0, (1, 1)), "x"))  # (metric prefix, name, line style, marker)
CURRICULUM = "task.curriculum"
NGRAM_ORDERS = (1, 2, 3, 4)


def groups(records: list[dict]) -> tuple[list[str], dict[tuple, list[dict]]]:
    """``(mixer, other varying settings) -> runs`` (seeds together)."""
    extra = [k for k in varying_keys(records) if k != "task.name"]
    # the curriculum's schedule only where it differs between runs that use a curriculum
    scheduled = [r for r in records if flatten(r["config"]).get(CURRICULUM) is True]
    extra = [k for k in extra if not k.startswith(CURRICULUM + "_") or
             len({repr(flatten(r["config"]).get(k)) for r in scheduled}) > 1]
    out: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        flat = flatten(r["config"])
        out[(mixer_label(r["config"]), *(flat.get(k) for k in extra))].append(r)
    return extra, dict(sorted(out.items(), key=lambda kv: sort_key(kv[0])))


def frame(rows: list[dict]) -> pd.DataFrame:
    """The rows as a table, a cell a row does not have (a baseline's parameters) shown as ``-``."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    return pd.DataFrame([{c: row.get(c, "-") for c in columns} for row in rows])


def curve(run: dict, prefix: str, n_points: int) -> list[float]:
    return [run["final"]["eval"]["prompts"][f"{prefix}_k{k}"] for k in range(n_points)]


def left_plateau(run: dict, n_points: int) -> bool:
    """Whether the run's final error at the largest number of examples is below ``PLATEAU`` times
    the zero predictor's on the same prompts."""
    last = n_points - 1
    prompts = run["final"]["eval"]["prompts"]
    return prompts[f"err_k{last}"] < PLATEAU * prompts[f"zero_k{last}"]


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
        row["left plateau"] = f"{sum(left_plateau(r, n_points) for r in ok)}/{len(ok)}" if ok else "-"
        row.update(memory_cells(ok))
        rows.append(row)
    # the baselines are the same for every run (the prompts are the same); older records lack some
    baselines = [(prefix, name, style, marker) for prefix, name, style, marker in BASELINES
                 if ok_all and f"{prefix}_k0" in ok_all[0]["final"]["eval"]["prompts"]]
    for prefix, name, _, _ in baselines:
        values = curve(ok_all[0], prefix, n_points)
        rows.append({"mixer": f"({name})", **{f"err/d k={k}": f"{values[k]:.3f}" for k in marks},
                     "err/d mean over k": f"{mean(values):.3f}"})
    header += (f" Left plateau: seeds whose error at k = {n_points - 1} is below {PLATEAU} x the zero predictor's "
               f"on the same prompts.")
    written = write_table(frame(rows), out_dir, "regression_table", header, latex="icl.regression_table")
    if not ok_all:
        return written
    fig, axes = new_figure("regression_error_vs_examples")
    ax = axes[0][0]
    labels = series_labels(list(by_key), extra)
    styles = series_styles(list(labels.values()))
    ks = list(range(n_points))
    for key, runs in by_key.items():
        ok = [r for r in runs if r["status"] == "ok"]
        if ok:
            plot_series(ax, ks, [curve(r, "err", n_points) for r in ok], styles[labels[key]], labels[key])
    for prefix, name, style, marker in baselines:
        ax.plot(ks, curve(ok_all[0], prefix, n_points), linestyle=style, marker=marker or None, markersize=2.5,
                markevery=max(1, n_points // 10), color="0.2" if prefix == "lsq" else REFERENCE_COLOR, linewidth=1.0,
                label=name, zorder=3)
    ax.axvline(d, color="0.85", zorder=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("in-context examples")
    ax.set_ylabel("squared error / d")
    ax.set_ylim(0, 1.25)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    fig.tight_layout()
    legend_below(fig, columns=2)
    return written + save_figure(fig, out_dir, "regression_error_vs_examples")


def language_scores(metrics: dict) -> dict[str, float]:
    """A set's mean metrics -> accuracy per sequence, per token (correct over scored tokens of the
    set, RegBench's), TVD and L1 (2 TVD; derived for records written before ``l1``); per-token
    accuracy is None for those records."""
    per_token = (metrics["correct_tokens"] / metrics["scored_tokens"]
                 if metrics.get("scored_tokens") else None)
    return {"accuracy": metrics["accuracy"], "token_accuracy": per_token, "tvd": metrics["tvd"],
            "l1": metrics.get("l1", 2 * metrics["tvd"])}


def evaluation_set(record: dict) -> tuple[object, object, dict]:
    """The task and evaluation batch a record names: the frozen copy when it is on disk, else the
    task config's own generator; with where it came from and whether its digest equals the record's."""
    cfg = record["config"]["task"]
    task = tasks.build(cfg["name"], **{k: v for k, v in cfg.items() if k != "name"})
    loaded = frozen.load(cfg, record["config"].get("results_dir", "results"))
    sets, source = (loaded[0], "frozen") if loaded is not None else (task.eval_sets(), "regenerated")
    batch = sets["test"]
    named = record.get("eval_sets", {}).get("sha256", {}).get("test")
    return task, batch, {"source": source, "sha256": frozen.digest(batch),
                         "matches_records": None if named is None else named == frozen.digest(batch)}


def ngram_baselines(record: dict, out_dir: Path) -> dict:
    """RegBench's in-context n-gram scores (orders ``NGRAM_ORDERS``) on the evaluation set
    ``record`` names, from ``out_dir/ngram_baselines_<set id>.json`` when computed before."""
    set_id = record.get("eval_sets", {}).get("id") or frozen.set_id(record["config"]["task"])
    cache = out_dir / f"ngram_baselines_{set_id}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    task, batch, info = evaluation_set(record)
    orders = {}
    for order in NGRAM_ORDERS:
        per_example = task.baseline_metrics(batch, order)
        orders[str(order)] = language_scores({k: float(v.float().mean()) for k, v in per_example.items()})
    result = {"eval_set": set_id, **info, "orders": orders}
    out_dir.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(result, indent=1) + "\n")
    return result


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def language_report(records: list[dict], header: str, title: str, out_dir: Path) -> list[Path]:
    extra, by_key = groups(records)
    rows = []
    for key, runs in by_key.items():
        ok = [r for r in runs if r["status"] == "ok"]
        first = (ok or runs)[0]
        scores = [language_scores(r["final"]["eval"]["test"]) for r in ok]
        per_token = [s["token_accuracy"] for s in scores if s["token_accuracy"] is not None]
        rows.append({"mixer": key[0], **dict(zip(extra, key[1:])), "params": first.get("params", {}).get("total"),
                     "runs": status_note(runs),
                     "accuracy per sequence (%)": mean_std([s["accuracy"] for s in scores], 1, 100),
                     "accuracy per token (%)": mean_std(per_token, 1, 100) if len(per_token) == len(scores) else "-",
                     "TVD": mean_std([s["tvd"] for s in scores]),
                     "L1 (RegBench's)": mean_std([s["l1"] for s in scores]),
                     "eval loss": mean_std([r["final"]["eval"]["test"]["loss"] for r in ok]), **memory_cells(ok)})
    by_set: dict[str, dict] = {}  # evaluation set id -> a record naming it
    for r in records:
        by_set.setdefault(r.get("eval_sets", {}).get("id") or frozen.set_id(r["config"]["task"]), r)
    ngrams = {set_id: ngram_baselines(r, out_dir) for set_id, r in sorted(by_set.items())}
    for set_id, result in ngrams.items():
        where = f", set {set_id}" if len(ngrams) > 1 else ""
        for order, s in result["orders"].items():
            rows.append({"mixer": f"({order}-gram{where})", "accuracy per sequence (%)": _percent(s["accuracy"]),
                         "accuracy per token (%)": _percent(s["token_accuracy"]), "TVD": f"{s['tvd']:.3f}",
                         "L1 (RegBench's)": f"{s['l1']:.3f}"})
    sources = "; ".join(f"set {i}: {res['source']}" + ("" if res["matches_records"] is not False else
                                                        " (its digest differs from the records'!)")
                        for i, res in ngrams.items())
    header += (" Accuracy per sequence: the mean over sequences of each one's share of allowed argmax symbols; "
               "per token: allowed argmax symbols over all scored tokens of the set (RegBench's average). "
               "TVD: total-variation distance to the automaton's next-symbol distribution; L1 = 2 TVD, the "
               "distance RegBench logs. n-gram rows: RegBench's in-context back-off n-gram on the same set "
               f"({sources}).")
    written = write_table(frame(rows), out_dir, "language_table", header, latex="icl.language_table")
    if not any(r["status"] == "ok" for r in records):
        return written
    fig, axes = new_figure("language_learning_curves", 1, 2)
    axes = axes[0]
    labels = series_labels(list(by_key), extra)
    styles = series_styles(list(labels.values()))
    for key, runs in by_key.items():
        ok = [r for r in runs if r["status"] == "ok"]
        if not ok:
            continue
        n = min(len(r["curve"]) for r in ok)
        xs = [p["train_flops"] for p in ok[0]["curve"][:n]]
        for ax, metric, scale in zip(axes, ("accuracy", "tvd"), (100, 1)):
            per_seed = [[p["eval"]["test"][metric] for p in r["curve"][:n]] for r in ok]
            plot_series(ax, xs, per_seed, styles[labels[key]], labels[key], scale=scale)
    if len(ngrams) == 1:  # reference lines (one evaluation set; several would need one panel each)
        result = next(iter(ngrams.values()))
        lines = {"1": ":", "2": "-.", "3": "--", "4": (0, (3, 1, 1, 1, 1, 1))}
        for order, s in result["orders"].items():
            for ax, metric, scale in zip(axes, ("accuracy", "tvd"), (100, 1)):
                ax.axhline(scale * s[metric], color=REFERENCE_COLOR, linewidth=0.8, linestyle=lines.get(order, "--"),
                           label=f"{order}-gram (in context)")
    for ax, name in zip(axes, ("accuracy per sequence (%)", "total-variation distance")):
        ax.set_xscale("log")
        ax.set_xlabel("training FLOPs (analytic, fwd + bwd)")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3, which="both")
        tidy_log_axis(ax, "x")
    axes[0].set_ylim(0, 102)
    axes[1].set_ylim(bottom=0)
    fig.suptitle(title)
    fig.tight_layout()
    legend_below(fig)
    return written + save_figure(fig, out_dir, "language_learning_curves")


def _shared(records: list[dict], path: str) -> object:
    """The value of the dotted config key ``path`` where every record agrees, else None."""
    values = {repr(flatten(r["config"]).get(path)) for r in records}
    return flatten(records[0]["config"]).get(path) if len(values) == 1 else None


def describe(records: list[dict]) -> str:
    r = records[0]
    train, model = r["config"]["train"], r["config"]["model"]
    task = r["task_summary"]
    if r["config"]["task"]["name"] == "icl_regression":
        names = {prefix: name for prefix, name, _, _ in BASELINES}
        baselines = ", ".join(names[b] for b in task.get("baselines", ["lsq", "zero"]) if b in names)
        what = (f"In-context linear regression (Garg et al. 2022): d = {task['n_dims']}, {task['n_points']} examples per "
                f"prompt, noise std {task['noise_std']}; squared error / d on the same evaluation prompts for every "
                f"model and for the baselines ({baselines}; least squares is minimum-norm below d examples).")
        if _shared(records, "task.curriculum") is True and task.get("curriculum_start"):
            what += (f" Garg et al.'s curriculum: training prompts from {task['curriculum_start'][0]} effective "
                     f"dimensions and {task['curriculum_start'][1]} examples, +1 / +2 every "
                     f"{task['curriculum_interval']} steps up to the full size; evaluation always at full size.")
        elif _shared(records, "task.curriculum") is False:
            what += " No curriculum (every training prompt at full size)."
        position = _shared(records, "model.position")
        if position is not None:
            what += f" Position embedding in the backbone: {position}."
    else:
        longest = task["strings"][1] * (task["max_string_len"] + 1) - 1  # the longest sequence generated
        if "task.max_len" in varying_keys(records):
            cut = "cut to the table's max_len tokens"
        elif task["max_len"] >= longest:
            cut = f"nothing cut (up to {longest} tokens)"
        else:
            cut = f"cut to {task['max_len']} tokens"
        exclusion = _shared(records, "task.exclude_eval_automata")
        what = (f"In-context language learning (Akyürek et al. 2024, RegBench): a random automaton per sequence with "
                f"{task['states'][0]}-{task['states'][1]} states and {task['alphabet'][0]}-{task['alphabet'][1]} of "
                f"{task['num_symbols']} symbols, {task['strings'][0]}-{task['strings'][1]} strings of length "
                f"1-{task['max_string_len']}, {cut}; accuracy = argmax allowed by the automaton.")
        if exclusion is not None:
            what += (" Evaluation automata excluded from training (minimised automata compared, as RegBench does)."
                     if exclusion else " Evaluation automata not excluded from training.")
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
