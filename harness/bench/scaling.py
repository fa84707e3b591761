"""The scaling benchmark: forward + backward time and memory of each mixer against sequence length.

    python -m harness.bench.scaling                       # profile by hardware (conf/scaling/{cpu,gpu}.yaml)
    python -m harness.bench.scaling only=[tmm,attention] scaling.lengths=[1024,4096]

At a fixed number of tokens per batch (batch = tokens // n), each variant runs ``warmup`` untimed
and ``repeats`` timed passes per length (median; CUDA events on GPU) and one pass under a
saved-tensor hook and the CUDA allocator's peak counter. A length that runs out of memory is
recorded as ``oom`` and the sweep goes on. Per-sequence time and memory (batch value / batch) are
fitted on log-log axes over the upper part of the lengths; the slopes are shown beside each
mixer's declared complexity. Writes results/scaling/<profile>/: measurements.json, table.{md,csv,tex},
time_vs_length.{png,pdf} and memory_vs_length.{png,pdf}.
"""
from __future__ import annotations

import logging
import math
import sys

import torch

from harness.bench.measure import memory_forward_backward, time_forward_backward
from harness.launch.entry import entry_point
from harness.launch.profile import with_profile
from harness.run.config import ConfigError, resolve_device
from harness.run.environment import environment
from harness.run.faults import fault_fields
from harness.run.records import results_folder, write_atomic
import mixers
from mixers.catalogue import mixer_defaults

log = logging.getLogger("mixbench.scaling")
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def variant_options(spec: dict) -> tuple[str, dict]:
    """Registry name and options: conf/mixer/<mixer>.yaml overridden by the variant's own keys."""
    spec = {k: v for k, v in spec.items() if k not in ("max_length", "cuda_only")}
    name = spec.pop("mixer")
    try:
        options = mixer_defaults(name)
    except FileNotFoundError:
        raise ConfigError(f"variants: no conf/mixer/{name}.yaml; valid mixers: {', '.join(mixers.available())}") from None
    options.update(spec)
    return name, options


def measure_variant(name: str, spec: dict, scfg: dict, device: torch.device) -> list[dict]:
    mixer_name, options = variant_options(spec)
    dtype = DTYPES[scfg["dtype"]]
    rows = []
    for n in scfg["lengths"]:
        batch = max(1, scfg["tokens_per_batch"] // n)
        row = {"variant": name, "mixer": mixer_name, "options": options, "length": n, "batch": batch}
        if spec.get("cuda_only") and device.type != "cuda":
            rows.append({**row, "status": "skipped", "error": "needs a CUDA device"})
            continue
        if spec.get("max_length") and n > spec["max_length"]:
            rows.append({**row, "status": "skipped", "error": f"n > max_length={spec['max_length']}"})
            continue
        mixer = x = grad = None
        try:
            torch.manual_seed(0)
            mixer = mixers.build(mixer_name, scfg["d_model"], n, **options).to(device)
            gen = torch.Generator(device=device).manual_seed(n)
            x = torch.randn(batch, n, scfg["d_model"], device=device, generator=gen, requires_grad=True)
            grad = torch.randn(batch, n, scfg["d_model"], device=device, generator=gen)
            row.update(backend=mixer.backend_at(n), params=sum(p.numel() for p in mixer.parameters()),
                       analytic_forward_flops=batch * mixer.flops(n) + mixer.parameter_flops(n))
            row.update(time_forward_backward(mixer, x, grad, dtype, scfg["warmup"], scfg["repeats"]))
            row.update(memory_forward_backward(mixer, x, grad, dtype))
            row["status"] = "ok"
            log.info("%-12s n=%-6d batch=%-5d %9.3f ms  saved %8.1f MB", name, n, batch, 1e3 * row["median_s"],
                     row["saved_bytes"] / 2**20)
        except Exception as err:  # recorded (oom or failed); the sweep goes on
            row.update(fault_fields(err))
            log.warning("%-12s n=%-6d %s: %s", name, n, row["status"], row["error"])
        finally:
            del mixer, x, grad
            if device.type == "cuda":
                torch.cuda.empty_cache()
        rows.append(row)
    return rows


def loglog_slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log y against log x (NaN with fewer than 2 points)."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x > 0 and y > 0]
    if len(pts) < 2:
        return float("nan")
    mx, my = sum(p[0] for p in pts) / len(pts), sum(p[1] for p in pts) / len(pts)
    var = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / var if var else float("nan")


def fitted_slopes(rows: list[dict], fit_from: float) -> dict[str, float]:
    """Slopes of per-sequence time, memory and analytic forward FLOPs (the method's cost, free of the
    host loops and kernel overheads that time also measures) against length over the upper
    ``1 - fit_from`` of lengths."""
    ok = sorted((r for r in rows if r["status"] == "ok"), key=lambda r: r["length"])
    ok = ok[int(len(ok) * fit_from):] if len(ok) >= 4 else ok
    lengths = [r["length"] for r in ok]
    out = {"time": loglog_slope(lengths, [r["median_s"] / r["batch"] for r in ok]),
           "saved_memory": loglog_slope(lengths, [r["saved_bytes"] / r["batch"] for r in ok]),
           "flops": loglog_slope(lengths, [r["analytic_forward_flops"] / r["batch"] for r in ok]),
           "fit_lengths": lengths}
    if ok and "activation_peak_bytes" in ok[0]:
        out["peak_memory"] = loglog_slope(lengths, [r["activation_peak_bytes"] / r["batch"] for r in ok])
    return out


def main_with(cfg: dict) -> dict:
    scfg = cfg["scaling"]
    device = resolve_device(scfg["device"])
    if scfg.get("threads"):
        torch.set_num_threads(scfg["threads"])
    if scfg["dtype"] not in DTYPES:
        raise ConfigError(f"scaling.dtype: must be one of {', '.join(DTYPES)}, got {scfg['dtype']!r}")
    variants = cfg["variants"]
    if cfg.get("only"):
        unknown = sorted(set(cfg["only"]) - set(variants))
        if unknown:
            raise ConfigError(f"only: unknown variant(s) {unknown}; valid: {', '.join(variants)}")
        variants = {k: v for k, v in variants.items() if k in cfg["only"]}
    result = {"config": cfg, "environment": environment(device), "variants": {}}
    for name, spec in variants.items():
        rows = measure_variant(name, spec, scfg, device)
        mixer_name, options = variant_options(spec)
        complexity = mixers.mixer_class(mixer_name).declared_complexity(**options)  # without building it
        declared = {"time": complexity["time_exponent"], "memory": complexity["memory_exponent"],
                    "time_complexity": complexity["time_complexity"], "memory_complexity": complexity["memory_complexity"]}
        result["variants"][name] = {"rows": rows, "declared": declared,
                                    "fitted": fitted_slopes(rows, cfg["fit_from"]),
                                    "backend": " / ".join(dict.fromkeys(r["backend"] for r in rows if r["status"] == "ok")) or "-"}
    out_dir = results_folder(cfg["results_dir"], "scaling") / scfg["profile"]
    write_atomic(out_dir / "measurements.json", result)
    from harness.report.scaling import write_scaling_report

    for path in write_scaling_report(result, out_dir):
        log.info("wrote %s", path)
    return result


main = entry_point("scaling", main_with, log)


if __name__ == "__main__":
    sys.argv = with_profile(sys.argv, "scaling")
    main()
