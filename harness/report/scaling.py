"""Tables and log-log plots of a scaling-benchmark result (see ``harness.bench.scaling``)."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from harness.report.kit import hardware_label, legend_below, new_figure, save_figure, series_styles, tidy_log_axis, write_table


def _fmt(x: float, digits: int = 2) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _cell(row: dict, key: str, scale: float, digits: int) -> str:
    if row["status"] != "ok":
        return row["status"]
    return f"{row[key] * scale:.{digits}f}"


def scaling_tables(result: dict) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Summary (slopes beside declared complexity: time, and, where the measurements fitted it, the
    analytic forward FLOPs, the method's own cost free of host loops and kernel overheads), time
    (ms) and activation memory (MB) per length."""
    summary, times, memory = [], [], []
    gpu = result["environment"].get("device") == "cuda"
    flops = any("flops" in v["fitted"] for v in result["variants"].values())  # measured before it was fitted: none
    mem_key = "activation_peak_bytes" if gpu else "saved_bytes"
    for name, v in result["variants"].items():
        fitted, declared = v["fitted"], v["declared"]
        params = next((r["params"] for r in v["rows"] if r["status"] == "ok"), None)
        row = {"variant": name, "backend": v["backend"], "params": params,
               "declared time": declared["time_complexity"], "time slope": _fmt(fitted["time"]),
               **({"FLOP slope": _fmt(fitted.get("flops", float("nan")))} if flops else {}),
               "declared memory": declared["memory_complexity"],
               "memory slope (saved)": _fmt(fitted["saved_memory"])}
        if gpu:
            row["memory slope (peak)"] = _fmt(fitted.get("peak_memory", float("nan")))
        row["fit over n"] = f"{fitted['fit_lengths'][0]}-{fitted['fit_lengths'][-1]}" if fitted["fit_lengths"] else "-"
        summary.append(row)
        times.append({"variant": name, **{str(r["length"]): _cell(r, "median_s", 1e3, 2) for r in v["rows"]}})
        memory.append({"variant": name, **{str(r["length"]): _cell(r, mem_key, 2**-20, 0) for r in v["rows"]}})
    return pd.DataFrame(summary), pd.DataFrame(times), pd.DataFrame(memory)


def plot_scaling(result: dict, out_dir: Path) -> list[Path]:
    """Time and activation memory per batch against sequence length (log-log), a line per variant
    in its mixer's style (a second variant of one mixer hollow, with the next line style); x marks a
    length that ran out of memory."""
    gpu = result["environment"].get("device") == "cuda"
    mem_key = "activation_peak_bytes" if gpu else "saved_bytes"
    s = result["config"]["scaling"]
    title = f"{hardware_label(result['environment'])}, d_model {s['d_model']}, {s['dtype']}"
    styles = series_styles(list(result["variants"]))
    paths = []
    for key, scale, ylabel, stem, slope_key in (
        ("median_s", 1e3, "fwd + bwd time (ms)", "time_vs_length", "time"),
        (mem_key, 2**-20, "activation memory (MB)", "memory_vs_length", "peak_memory" if gpu else "saved_memory"),
    ):
        fig, axes = new_figure(stem)
        ax = axes[0][0]
        for name, v in result["variants"].items():
            ok = [r for r in v["rows"] if r["status"] == "ok"]
            if not ok:
                continue
            slope = v["fitted"].get(slope_key, float("nan"))
            ax.plot([r["length"] for r in ok], [r[key] * scale for r in ok], label=f"{name} (slope {_fmt(slope)})",
                    **styles[name])
            oom = [r for r in v["rows"] if r["status"] == "oom"]
            if oom:
                ax.plot([r["length"] for r in oom], [ok[-1][key] * scale] * len(oom), "x", color=styles[name]["color"],
                        markersize=6)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length n (batch = tokens / n)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3, which="both")
        tidy_log_axis(ax, "y")
        fig.tight_layout()
        what = "" if key == "median_s" else ("allocator peak, " if gpu else "saved for backward, ")
        legend_below(fig, title=f"per batch of {s['tokens_per_batch']:,} tokens ({what}log-log slope per\n"
                                "sequence in brackets); x: out of memory")
        paths += save_figure(fig, out_dir, stem)
    return paths


def write_scaling_report(result: dict, out_dir: Path) -> list[Path]:
    summary, times, memory = scaling_tables(result)
    env = result["environment"]
    pk = env.get("packages", {})
    stamp = (f"Hardware: {hardware_label(env)}; torch {pk.get('torch')}, CUDA {env.get('cuda', '-')}, "
             f"mamba-ssm {pk.get('mamba-ssm', '-')}, causal-conv1d {pk.get('causal-conv1d', '-')}, "
             f"triton {pk.get('triton', '-')}; git {env.get('git')}.")
    s = result["config"]["scaling"]
    setup = (f"Mixer forward + backward only, d_model {s['d_model']}, {s['tokens_per_batch']:,} tokens per batch "
             f"(batch = tokens / n), {s['dtype']}, median of {s['repeats']} after {s['warmup']} warm-up passes. "
             f"Slopes: least-squares log-log fit of per-sequence time and memory (batch value / batch) against n"
             + ("; FLOP slope: the same fit of the mixer's analytic forward FLOPs per sequence (what the method "
                "costs, where time also measures host loops and kernel launches)." if any(
                    "flops" in v["fitted"] for v in result["variants"].values()) else "."))
    paths = write_table(summary, out_dir, "table", f"# Scaling with sequence length\n\n{stamp}\n\n{setup}",
                        latex="scaling.table")
    paths += write_table(times, out_dir, "time_ms", "# Forward + backward time per batch (ms)")
    paths += write_table(memory, out_dir, "memory_mb",
                         "# Activation memory per batch (MB)" + (" (CUDA allocator peak above parameters and inputs)"
                                                                 if env.get("device") == "cuda" else
                                                                 " (bytes saved for backward)"))
    return paths + plot_scaling(result, out_dir)
