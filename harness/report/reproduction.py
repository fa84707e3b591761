"""Your runs beside the published ones: for each configuration you ran that the published records also
ran (the same config but for its seed and thread count), each final metric of each evaluation set,
yours and the published, the hardware of each, and a verdict.

The verdict: a value of yours (the mean over your seeds; with one seed, that run's value) is
**inside** the published seed spread when it lies in ``[min - t, max + t]`` of the published
seeds' values, ``t = max(absolute_tolerance, relative_tolerance x |published mean|)``
(conf/report.yaml). With one published seed the spread is that value ± ``t``; with several, their
range widened by ``t`` (two seeds rarely span the variation a third would show). Outside it says
``above`` or ``below``. A configuration without a published counterpart, or whose published or
your runs did not finish, says so instead of a verdict.

``reproduction.{md,csv}`` go beside your own tables; ``summary`` is the lines the report prints at
the end (what was reproduced, what was not).
"""
from __future__ import annotations

import copy
from collections import defaultdict
from pathlib import Path

import pandas as pd

from harness.report.kit import (flatten, hardware_label, mean, mean_std, percent_mean_std, percent_scale, settings_label,
                                varying_keys)
from harness.run.records import run_id

# what the published and your runs may differ in and still be the same configuration
NOT_COMPARED = ("seed", "train.threads")


def cell_id(record: dict) -> str:
    """The id of a record's config without its seed and thread count: the runs that are one cell."""
    config = copy.deepcopy(record["config"])
    for key in NOT_COMPARED:
        group, _, name = key.rpartition(".")
        (config.get(group, {}) if group else config).pop(name, None)
    return run_id(config)


def spread(values: list[float], absolute: float, relative: float) -> tuple[float, float]:
    """``(low, high)``: the published seeds' range widened by ``max(absolute, relative x |mean|)``."""
    t = max(absolute, relative * abs(mean(values)))
    return min(values) - t, max(values) + t


def verdict(value: float, low: float, high: float) -> str:
    return "inside" if low <= value <= high else ("above" if value > high else "below")


def hardware(runs: list[dict]) -> str:
    return "; ".join(sorted({hardware_label(r.get("environment", {})) for r in runs})) or "-"


def seeds(runs: list[dict]) -> str:
    return ",".join(str(s) for s in sorted(r["config"]["seed"] for r in runs))


def compare(yours: list[dict], published: list[dict], absolute: float, relative: float) -> pd.DataFrame:
    """One row per (configuration of yours, evaluation set, metric): yours and the published mean ± std,
    their seeds and hardware, the published spread and the verdict; a configuration without a published
    counterpart, or without finished runs on either side, gets one row saying so."""
    extra = tuple(varying_keys(yours))
    cells: dict[str, list[dict]] = defaultdict(list)
    for r in yours:
        cells[cell_id(r)].append(r)
    theirs: dict[str, list[dict]] = defaultdict(list)
    for r in published:
        theirs[cell_id(r)].append(r)
    rows = []
    for cell, runs in sorted(cells.items(), key=lambda kv: repr(_label(kv[1][0], extra))):
        first = runs[0]
        base = {"mixer": _label(first, extra), "protocol": first["config"]["task"].get("protocol", "-")}
        ok = [r for r in runs if r["status"] == "ok"]
        pub_all = theirs.get(cell, [])
        pub = [r for r in pub_all if r["status"] == "ok"]
        sides = {"your seeds": seeds(runs), "your hardware": hardware(runs),
                 "published seeds": seeds(pub_all) or "-", "published hardware": hardware(pub_all)}
        if not ok or not pub:
            reason = ("no published run of this configuration" if not pub_all else
                      "no finished published run" if not pub else f"your run did not finish ({runs[0]['status']})")
            rows.append({**base, "set": "-", "metric": "-", "yours": "-", "published": "-", "spread": "-",
                         "verdict": reason, **sides})
            continue
        for name, metrics in ok[0]["final"]["eval"].items():
            for metric in metrics:
                mine = [r["final"]["eval"][name][metric] for r in ok]
                ref = [r["final"]["eval"].get(name, {}).get(metric) for r in pub]
                ref = [v for v in ref if v is not None]
                mine = [v for v in mine if v is not None]
                scale = percent_scale(metric)
                pct = scale != 1  # fractions shown in %, as in every other table
                shown = percent_mean_std if pct else (lambda values: mean_std(values, 4))
                unit = {"unit": "%" if pct else "-"}
                if not ref or not mine:
                    rows.append({**base, "set": name, "metric": metric, **unit, "yours": shown(mine),
                                 "published": shown(ref), "spread": "-",
                                 "verdict": "not in the published records" if not ref else "not finite", **sides})
                    continue
                low, high = spread(ref, absolute, relative)
                rows.append({**base, "set": name, "metric": metric, **unit, "yours": shown(mine), "published": shown(ref),
                             "spread": f"[{scale * low:.1f}, {scale * high:.1f}]" if pct else f"[{low:.4f}, {high:.4f}]",
                             "verdict": verdict(mean(mine), low, high), **sides})
    return pd.DataFrame(rows)


def _label(record: dict, extra: tuple[str, ...]) -> str:
    flat = flatten(record["config"])
    return settings_label(record["config"]["mixer"]["name"], extra, [flat.get(k) for k in extra])


def summary(table: pd.DataFrame, benchmark: str, profile: str, shown: int = 8) -> list[str]:
    """What was reproduced: configurations with every metric inside, the cells outside (the first
    ``shown`` of them), the configurations without a published counterpart."""
    if table.empty:
        return [f"{benchmark} ({profile}): none of your runs to compare"]
    judged = table[table["verdict"].isin(("inside", "above", "below"))]
    by_config = [bool((group["verdict"] == "inside").all()) for _, group in judged.groupby(["mixer", "protocol"], sort=False)]
    unmatched = table[~table["verdict"].isin(("inside", "above", "below"))]
    if not by_config:
        lines = [f"{benchmark} ({profile}): none of your configurations has finished published runs to compare"]
    else:
        lines = [f"{benchmark} ({profile}): {sum(by_config)} of {len(by_config)} configurations reproduced "
                 f"(every final metric inside the published seed spread); {int((judged['verdict'] == 'inside').sum())} "
                 f"of {len(judged)} metric cells inside"]
    outside = judged[judged["verdict"] != "inside"]
    for _, row in outside.head(shown).iterrows():
        lines.append(f"  outside: {row['mixer']} ({row['protocol']}) {row['metric']} {row['set']}: yours "
                     f"{row['yours']}, published {row['published']} (spread {row['spread']}, {row['verdict']})")
    if len(outside) > shown:
        lines.append(f"  ... and {len(outside) - shown} more cells outside (see reproduction.md)")
    for _, row in unmatched.drop_duplicates(["mixer", "protocol", "verdict"]).iterrows():
        if row["set"] == "-":
            lines.append(f"  not compared: {row['mixer']} ({row['protocol']}): {row['verdict']}")
    return lines


def write(table: pd.DataFrame, out_dir: Path, header: str) -> list[Path]:
    """``reproduction.md`` (under ``header``) and ``reproduction.csv`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "reproduction.md", out_dir / "reproduction.csv"]
    paths[0].write_text(header + "\n\n" + (table.to_markdown(index=False) if not table.empty else "(no runs)") + "\n")
    table.to_csv(paths[1], index=False)
    return paths
