"""Invertibility of the Toeplitz layers of trained models: Fredholm index, rank, conditioning.

    python -m harness.bench.invertibility benchmark=tmm_claims_cpu     # conf/invertibility.yaml
    python -m harness.bench.invertibility runs=[<run id>,...] profile=mine

Convention. A causal token mixer with kernel ``k_0..k_{n-1}`` multiplies by the lower-triangular
Toeplitz matrix ``T[i, j] = k[i - j]`` (``j <= i``; ``y_i = sum_{j<=i} k_{i-j} x_j``). Its symbol is
``a(z) = sum_j k_j z^j``, and the semi-infinite operator ``T(a)`` on l2(N) (Gohberg's theorem) is
Fredholm when ``a`` has no zero on the unit circle, with index ``dim ker - dim coker = -wind(a)``,
``wind(a)`` the number of times ``a(e^{i theta})`` winds around 0 as theta goes once round
(counter-clockwise), which equals the number of zeros of ``a`` inside the unit disc. So a delta
kernel (the identity) has index 0, a pure shift by k (``a = z^k``, the isometry ``S^k``: kernel 0,
cokernel k) has index -k, and a Kaiming-random kernel of length n, whose zeros fall about half
inside the disc, has index near -(n-1)/2. (The authors' code writes the upper-triangular transpose
with symbol ``sum_j k_j z^-j`` and reports its winding number: the same number.)

Winding number, robustly: the symbol on ``M`` equispaced points of the circle (one FFT), the phase
increments between neighbours summed (an unwrapped phase). On each arc of width ``h = 2 pi / M`` the
curve stays within ``C h^2 / 2`` (``C = sum_j j^2 |k_j|`` bounds ``|a''|``) of its tangent segment
``a_m + t a'_m h``, ``t`` in [0, 1]; when every such tube misses 0 the arc lies in a half-plane that
excludes 0, its phase change is the principal one and the count is exact (``certified``). M doubles
from ``min_points`` up to ``max_points`` until it is. A zero closer to the circle than ``margin * ||k||_1`` in value
(``min |a| / ||k||_1 < margin``) makes the index meaningless at the models' precision: such a kernel
is reported ``reliable: false`` (with its count), as is one never certified.

Finite matrix: the n x n causal matrix's singular values (float64 SVD), its numerical rank (singular
values above ``rank_rtol * sigma_max``; 1e-6, the float32 resolution the models compute in, as the
authors' cut), its condition number and its ``smallest`` smallest singular values.

Kernels (``toeplitz_kernels``): tmm and tmm_flat, each head's vector (and the second Toeplitz of
``expanded``); tnn, each channel's RPE coefficients ``gamma^k RPE(k)``; hyena, each channel's
materialised long filter with the skip ``D`` added at lag 0 (the operator is ``h * v + D v``). Other
mixers have no Toeplitz operator and are skipped. ``length``: null measures at the run's training
length. Writes ``<results_dir>/invertibility/<profile>/``: ``invertibility.{md,csv,tex}`` (per model),
``kernels.csv`` (per kernel), ``winding.{png,pdf}`` (symbol curves), ``singular_values.{png,pdf}``.
"""
from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from harness.bench.trained import RANDOM, TRAINED, models
from harness.launch.entry import entry_point
from harness.report.kit import save_figure, write_table
from harness.run.config import ConfigError
from harness.run.records import results_folder
from mixers.hyena import HyenaOperator
from mixers.tmm import ToeplitzMixer
from mixers.tnn import ToeplitzNeuralNetwork

log = logging.getLogger("mixbench.invertibility")
KAIMING = "kaiming random"


# ---- the mathematics ---------------------------------------------------------------------------
def causal_toeplitz_matrix(kernel: np.ndarray) -> np.ndarray:
    """``kernel (n,)`` -> the lower-triangular ``(n, n)`` matrix ``T[i, j] = kernel[i - j]`` for ``j <= i``."""
    k = np.asarray(kernel, dtype=np.float64)
    lag = np.arange(len(k))[:, None] - np.arange(len(k))[None, :]
    return np.where(lag >= 0, k[np.clip(lag, 0, None)], 0.0)


def symbol_on_circle(kernel: np.ndarray, points: int) -> np.ndarray:
    """``a(e^{2 pi i m / points}) = sum_j k_j e^{2 pi i j m / points}`` for ``m = 0..points-1``: ``(points,)`` complex."""
    k = np.asarray(kernel, dtype=np.float64)
    if points < len(k):
        raise ValueError(f"points={points} must be >= the kernel length {len(k)} (no aliasing)")
    return points * np.fft.ifft(k, points)


def segment_distance(start: np.ndarray, step: np.ndarray) -> np.ndarray:
    """Distance from 0 of each complex segment ``start + t step``, ``t`` in [0, 1]: ``(m,)``."""
    t = np.clip(-(start.real * step.real + start.imag * step.imag) / np.maximum(np.abs(step) ** 2, 1e-300), 0.0, 1.0)
    return np.abs(start + t * step)


def winding_number(kernel: np.ndarray, min_points: int = 4096, max_points: int = 2**22,
                   margin: float = 1e-7) -> dict:
    """The winding number of the symbol of ``kernel (n,)`` round 0 and the Fredholm index ``-winding``.

    Returns ``winding``, ``index``, ``points`` (grid size used), ``min_modulus`` (smallest ``|a|`` on
    the grid), ``relative_margin`` (``min_modulus / ||k||_1``), ``certified`` (the grid is provably fine
    enough) and ``reliable`` (certified and no zero within ``margin`` of the circle).
    """
    k = np.asarray(kernel, dtype=np.float64)
    norm1 = float(np.abs(k).sum())
    if norm1 == 0.0:
        return {"winding": 0, "index": 0, "points": 0, "min_modulus": 0.0, "relative_margin": 0.0,
                "certified": False, "reliable": False}
    lags = np.arange(len(k))
    curvature = float((lags**2 * np.abs(k)).sum())  # bound on |d^2 a / d theta^2|
    points = 1 << max(int(math.ceil(math.log2(max(min_points, 8 * len(k))))), 0)
    while True:
        a = symbol_on_circle(k, points)
        step = 2 * math.pi / points
        chord = 1j * step * symbol_on_circle(lags * k, points)  # a'(theta_m) * step: the tangent segment
        certified = bool((segment_distance(a, chord) > curvature * step**2 / 2).all())
        touching = float(np.abs(a).min()) < margin * norm1  # a zero (nearly) on the circle: no finer grid helps
        if certified or touching or points >= max_points:
            break
        points *= 2
    modulus = float(np.abs(a).min())
    turns = float(np.angle(np.roll(a, -1) / np.where(a == 0, 1, a)).sum()) / (2 * math.pi)
    winding = int(round(turns))
    relative = modulus / norm1
    return {"winding": winding, "index": -winding, "points": points, "min_modulus": modulus,
            "relative_margin": relative, "certified": bool(certified), "reliable": bool(certified and relative >= margin)}


def matrix_facts(kernel: np.ndarray, rank_rtol: float = 1e-6, smallest: int = 4) -> dict:
    """Singular values of the causal ``(n, n)`` matrix of ``kernel``: ``rank`` (those above ``rank_rtol *
    sigma_max``), ``n``, ``condition`` (sigma_max / sigma_min, inf when singular), ``sigma_max``,
    ``smallest`` (the ``smallest`` smallest, ascending) and ``singular_values`` (all, descending)."""
    s = np.linalg.svd(causal_toeplitz_matrix(kernel), compute_uv=False)
    top = float(s[0]) if len(s) else 0.0
    return {"n": len(s), "rank": int((s > rank_rtol * top).sum()) if top > 0 else 0,
            "condition": top / float(s[-1]) if s[-1] > 0 else math.inf, "sigma_max": top,
            "smallest": [float(v) for v in s[::-1][:smallest]], "singular_values": s}


def kaiming_kernel(n: int, generator: torch.Generator) -> np.ndarray:
    """A Kaiming-normal vector of length ``n`` (std sqrt(2 / n), ``nn.init.kaiming_normal_`` of a (1, n) weight)."""
    return (torch.randn(n, generator=generator, dtype=torch.float64) * math.sqrt(2.0 / n)).numpy()


# ---- the kernels of a model ----------------------------------------------------------------------
@torch.no_grad()
def toeplitz_kernels(mixer: torch.nn.Module, n: int) -> dict[str, np.ndarray]:
    """The Toeplitz kernels of one mixer at length ``n``: ``{name: (count, n)}`` float64; empty when it has none."""
    if isinstance(mixer, ToeplitzMixer):  # tmm and tmm_flat
        found = {"toeplitz": mixer.toeplitz.weight[:, :n]}
        if getattr(mixer, "expanded", False):
            found["toeplitz2"] = mixer.toeplitz2.weight[:, :n]
    elif isinstance(mixer, ToeplitzNeuralNetwork):
        found = {"tno": mixer.coefficients(n)}
    elif isinstance(mixer, HyenaOperator):
        filters = mixer.filter(n).clone()  # (d_model, n)
        filters[:, 0] += mixer.skip  # h * v + D v: D is the lag-0 tap of one Toeplitz operator
        found = {"long_filter+skip": filters}
    else:
        return {}
    return {name: k.detach().double().cpu().numpy() for name, k in found.items()}


def kernel_rows(kernels: dict[str, np.ndarray], base: dict, cfg: dict, keep_spectra: list) -> list[dict]:
    """One row per kernel (its index and matrix facts), with ``base``'s fields; spectra of the first
    few go to ``keep_spectra`` (for the plots)."""
    rows = []
    limit = cfg.get("max_kernels_per_layer")
    for name, bank in kernels.items():
        for c, k in enumerate(bank[:limit] if limit else bank):
            wind = winding_number(k, cfg["min_points"], cfg["max_points"], cfg["margin"])
            facts = matrix_facts(k, cfg["rank_rtol"], cfg["smallest"])
            spectrum = facts.pop("singular_values")
            if c < cfg["plot_per_model"] and len(keep_spectra) < 10_000:
                keep_spectra.append({**base, "kernel": name, "channel": c, "singular_values": spectrum, "vector": k})
            rows.append({**base, "kernel": name, "channel": c, **wind, **{f"sigma_min_{i + 1}": v for i, v in
                                                                          enumerate(facts.pop("smallest"))}, **facts})
    return rows


def summarise(rows: pd.DataFrame) -> pd.DataFrame:
    """One line per model: how many kernels, their index (mean, share 0, share reliable), rank and conditioning."""
    keys = ["source", "task", "mixer", "state", "n"]
    out = []
    for key, g in rows.groupby(keys, sort=False, dropna=False):
        reliable = g[g["reliable"]]
        out.append({**dict(zip(keys, key)), "kernels": len(g), "reliable": int(g["reliable"].sum()),
                    "index_mean": round(float(reliable["index"].mean()), 2) if len(reliable) else float("nan"),
                    "index_min": int(reliable["index"].min()) if len(reliable) else None,
                    "index_max": int(reliable["index"].max()) if len(reliable) else None,
                    "index_0_share": round(float((reliable["index"] == 0).mean()), 3) if len(reliable) else float("nan"),
                    "full_rank_share": round(float((g["rank"] == g["n"]).mean()), 3),
                    "rank_median": float(g["rank"].median()),
                    "log10_condition_median": round(float(np.log10(g["condition"].astype(float)).median()), 2)})
    return pd.DataFrame(out)


# ---- plots ---------------------------------------------------------------------------------------
def plot_winding(spectra: list[dict], out_dir: Path, points_per_tap: int = 64) -> list[Path]:
    """Symbol curves ``a(e^{i theta})`` of a few kernels per model (one panel per model), the origin marked."""
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys((s["source"], s["state"]) for s in spectra))
    cols = min(4, len(groups)) or 1
    rows = math.ceil(len(groups) / cols) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(1.7 * cols, 1.7 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, group in zip(axes.flat, groups):
        for s in (s for s in spectra if (s["source"], s["state"]) == group):
            a = symbol_on_circle(s["vector"], max(2048, points_per_tap * len(s["vector"])))
            a = np.append(a, a[:1])
            ax.plot(a.real, a.imag, linewidth=0.3, rasterized=True)  # thousands of points: raster in the PDF
        ax.scatter([0], [0], color="black", marker="+", s=40, linewidths=1.0, zorder=3)
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_title(f"{re.sub(r'-[0-9a-f]{12}$', '', group[0])}\n{group[1]}", fontsize=6)  # the run id is in the table
    fig.suptitle("Toeplitz symbols on the unit circle (+: origin)", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out_dir, "winding")


def plot_singular_values(spectra: list[dict], out_dir: Path) -> list[Path]:
    """Singular values (descending, normalised by sigma_max, log scale) of a few kernels per model: a
    panel per task, each mixer in its own style (trained: solid; its random-init twin: faint, dotted),
    the Kaiming-random vectors in grey in every panel."""
    from harness.report.kit import REFERENCE_COLOR, legend_below, mixer_style, new_figure

    tasks = list(dict.fromkeys(s["task"] for s in spectra if s["state"] != KAIMING)) or ["-"]
    fig, axes = new_figure("singular_values", 1, len(tasks), sharey=True)
    kaiming = [s for s in spectra if s["state"] == KAIMING]
    for ax, task in zip(axes[0], tasks):
        for s in kaiming:
            sv = s["singular_values"] / max(s["singular_values"][0], 1e-300)
            ax.semilogy(np.arange(1, len(sv) + 1), np.maximum(sv, 1e-20), color=REFERENCE_COLOR, linewidth=0.5,
                        alpha=0.6, label="Kaiming random")
        for s in (s for s in spectra if s["task"] == task and s["state"] != KAIMING):
            style = mixer_style(s["mixer"])
            sv = s["singular_values"] / max(s["singular_values"][0], 1e-300)
            trained = s["state"] == TRAINED
            ax.semilogy(np.arange(1, len(sv) + 1), np.maximum(sv, 1e-20), color=style["color"],
                        linewidth=0.8 if trained else 0.6, alpha=0.9 if trained else 0.45,
                        linestyle="-" if trained else ":", label=f"{s['mixer']}" + ("" if trained else " (random init)"))
        ax.set_title(task)
        ax.set_xlabel("singular value number")
        ax.grid(alpha=0.3, linewidth=0.4)
    axes[0][0].set_ylabel(r"$\sigma_i / \sigma_{max}$")
    fig.tight_layout()
    legend_below(fig, title="trained: solid; random init: dotted; grey: Kaiming-random vectors")
    return save_figure(fig, out_dir, "singular_values")


# ---- the benchmark -------------------------------------------------------------------------------
def check(cfg: dict) -> None:
    for field in ("min_points", "max_points", "smallest", "plot_per_model", "kaiming_samples"):
        if not isinstance(cfg[field], int) or cfg[field] < 0:
            raise ConfigError(f"{field}: must be an integer >= 0, got {cfg[field]!r}")
    if cfg["max_points"] < cfg["min_points"]:
        raise ConfigError(f"max_points: must be >= min_points={cfg['min_points']}, got {cfg['max_points']}")
    for field in ("rank_rtol", "margin"):
        if not 0 < float(cfg[field]) < 1:
            raise ConfigError(f"{field}: must be in (0, 1), got {cfg[field]!r}")
    if cfg["length"] is not None and (not isinstance(cfg["length"], int) or cfg["length"] < 1):
        raise ConfigError(f"length: must be null (each run's training length) or an integer >= 1, got {cfg['length']!r}")


def main_with(cfg: dict) -> pd.DataFrame:
    """Every Toeplitz kernel of every model ``cfg`` names, plus ``kaiming_samples`` Kaiming-random vectors
    at each length seen; writes the tables and plots and returns the per-kernel table."""
    check(cfg)
    out_dir = results_folder(cfg["results_dir"], "invertibility") / cfg["profile"]
    rows, spectra, lengths = [], [], set()
    for state, model, run_cfg, task, stem in models(cfg):
        n = cfg["length"] or task.max_train_input_len()
        if n > model.max_len:
            raise ConfigError(f"length: {n} exceeds model.max_len={model.max_len} of run {stem}")
        lengths.add(n)
        for layer, block in enumerate(model.blocks):
            kernels = toeplitz_kernels(block.mixer, n)
            base = {"source": stem, "task": task.name, "mixer": run_cfg["mixer"]["name"], "state": state, "layer": layer}
            rows += kernel_rows(kernels, base, cfg, spectra)
        log.info("%s (%s): %d kernels so far", stem, state, len(rows))
    generator = torch.Generator().manual_seed(cfg["seed"])
    for n in sorted(lengths or {cfg["length"] or 64}):
        bank = np.stack([kaiming_kernel(n, generator) for _ in range(cfg["kaiming_samples"])]) if cfg["kaiming_samples"] else None
        if bank is not None:
            base = {"source": f"kaiming n={n}", "task": "-", "mixer": "kaiming", "state": KAIMING, "layer": 0}
            rows += kernel_rows({"vector": bank}, base, cfg, spectra)
    table = pd.DataFrame(rows)
    if table.empty:
        raise ConfigError("runs / benchmark: none of these models has a Toeplitz operator (tmm, tmm_flat, tnn, hyena)")
    summary = summarise(table)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_table(summary, out_dir, "invertibility",
                f"# Fredholm index, rank and conditioning of Toeplitz layers ({cfg['profile']})\n\n"
                f"index = -(winding number of sum_j k_j z^j), over reliable kernels only; rank: singular values above "
                f"{cfg['rank_rtol']:g} sigma_max of the n x n causal matrix.")
    table.to_csv(out_dir / "kernels.csv", index=False)
    plot_winding(spectra, out_dir)
    plot_singular_values(spectra, out_dir)
    log.info("wrote %s\n%s", out_dir, summary.to_string(index=False))
    return table


main = entry_point("invertibility", main_with, log)


if __name__ == "__main__":
    main()
