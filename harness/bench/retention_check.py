"""The retention probe on states with a known answer: does it read what a state provably holds?

    python -m harness.bench.retention_check                 # conf/retention_check.yaml
    python -m harness.bench.retention_check slots=[8] decoder.steps=500

The retention benchmark (``harness.bench.retention``) trains a decoder to reconstruct every input
token from one hidden state. Before its readings of trained mixers mean anything, it must find what a
state holds when the answer is known. Here the state is a *shift register*: for random tokens
``x (batch, length)`` over ``vocab``, the state of the last token is the concatenation of the codes
``C[x_{n-1}], C[x_{n-2}], ..., C[x_{n-slots}]`` (``C``: a fixed Gaussian code of ``code_dim`` values
per token, one slot per distance) padded with zeros to ``d_model``: the last ``slots`` tokens are
stored exactly, nothing older at all. The benchmark's own decoder, sample counts and optimiser
(``conf/retention.yaml``) are trained on these states; the expected reading is ~100% accuracy at
distances ``< slots`` and chance (``1 / vocab``) beyond. Writes ``<results_dir>/retention/known_answer/``:
``known_answer.{md,csv,tex}`` (accuracy inside and beyond the stored window, per check),
``positions.csv`` and ``known_answer.{png,pdf}`` (accuracy against distance, one line per check).
"""
from __future__ import annotations

import logging

import pandas as pd
import torch

from harness.bench.retention import check as check_benchmark
from harness.bench.retention import decoder_description, per_position, train_decoder
from harness.launch.entry import entry_point
from harness.report.kit import save_figure, write_table
from harness.run.config import ConfigError
from harness.run.records import results_folder

log = logging.getLogger("mixbench.retention")


def shift_register_states(tokens: torch.Tensor, codes: torch.Tensor, slots: int, d_model: int) -> torch.Tensor:
    """``tokens (batch, length)`` -> states ``(batch, d_model)``: slot ``j < slots`` holds
    ``codes[tokens[:, length - 1 - j]]`` (``codes (vocab, code_dim)``), the rest is zero."""
    batch, length = tokens.shape
    code_dim = codes.shape[1]
    state = tokens.new_zeros((batch, d_model), dtype=codes.dtype)
    for j in range(min(slots, length)):
        state[:, j * code_dim:(j + 1) * code_dim] = codes[tokens[:, length - 1 - j]]
    return state


def measure_known(slots: int, cfg: dict) -> dict:
    """Per-position accuracy of the benchmark's decoder on states that hold the last ``slots`` tokens."""
    data = torch.Generator().manual_seed(cfg["seed"])
    codes = torch.randn(cfg["vocab"], cfg["code_dim"], generator=torch.Generator().manual_seed(cfg["seed"] + 1))
    train_tokens = torch.randint(0, cfg["vocab"], (cfg["train_samples"], cfg["length"]), generator=data)
    eval_tokens = torch.randint(0, cfg["vocab"], (cfg["eval_samples"], cfg["length"]), generator=data)
    train_states = shift_register_states(train_tokens, codes, slots, cfg["d_model"])
    eval_states = shift_register_states(eval_tokens, codes, slots, cfg["d_model"])
    decoder = train_decoder(train_states, train_tokens, cfg["vocab"], cfg, data)
    with torch.no_grad():
        loss, accuracy = per_position(decoder(eval_states), eval_tokens)
    return {"loss": loss, "accuracy": accuracy}


def check(cfg: dict) -> None:
    check_benchmark({**cfg, "inputs": ["random"]})
    for field in ("code_dim", "d_model", "vocab", "length"):
        if not isinstance(cfg[field], int) or cfg[field] < 1:
            raise ConfigError(f"{field}: must be an integer >= 1, got {cfg[field]!r}")
    if not cfg["slots"] or any(not isinstance(s, int) or s < 0 for s in cfg["slots"]):
        raise ConfigError(f"slots: must be a non-empty list of integers >= 0, got {cfg['slots']!r}")
    widest = max(cfg["slots"]) * cfg["code_dim"]
    if widest > cfg["d_model"]:
        raise ConfigError(f"slots: {max(cfg['slots'])} slots x code_dim {cfg['code_dim']} = {widest} exceed d_model={cfg['d_model']}")


def plot(positions: pd.DataFrame, cfg: dict, out_dir):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3.4, 2.3))
    styles = ["-", "--", "-.", ":"]
    chance = 1 / cfg["vocab"]
    for i, (slots, g) in enumerate(positions.groupby("slots")):
        g = g.sort_values("distance")
        style = styles[i % len(styles)]
        ax.plot(g["distance"], g["accuracy"], color="black", linestyle=style, linewidth=0.9,
                label=f"measured: state holds the last {slots}" if slots else "measured: state holds nothing")
        ax.plot(g["distance"], [1.0 if d < slots else chance for d in g["distance"]], color="0.6", linestyle=style,
                linewidth=0.7, drawstyle="steps-post", label="the answer: 100% where stored, then chance")
    ax.axhline(chance, color="0.8", linewidth=0.5)
    ax.set_xscale("symlog", linthresh=1)
    ticks = [t for t in (0, 1, 4, 16, 64, 256) if t < cfg["length"]] + [cfg["length"] - 1]
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlim(0, cfg["length"] - 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("distance from the embedded token", fontsize=6.5)
    ax.set_ylabel("reconstruction accuracy", fontsize=6.5)
    ax.tick_params(labelsize=6)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))  # the answer's label once
    ax.legend(unique.values(), unique.keys(), fontsize=5.5, frameon=False, loc="center right")
    ax.set_title(f"Retention probe, known answer (n {cfg['length']}, vocabulary {cfg['vocab']})", fontsize=6.5)
    fig.tight_layout()
    return save_figure(fig, out_dir, "known_answer")


def main_with(cfg: dict) -> pd.DataFrame:
    check(cfg)
    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])
    out_dir = results_folder(cfg["results_dir"], "retention") / cfg["profile"]
    summary, positions = [], []
    for slots in cfg["slots"]:
        result = measure_known(slots, cfg)
        accuracy = result["accuracy"].flip(0)  # by distance: 0 is the last token
        inside, beyond = accuracy[:slots], accuracy[slots:]
        summary.append({"slots": slots, "stored distances": f"0-{slots - 1}" if slots else "none",
                        "accuracy inside (%)": round(100 * float(inside.mean()), 1) if slots else None,
                        "min inside (%)": round(100 * float(inside.min()), 1) if slots else None,
                        "accuracy beyond (%)": round(100 * float(beyond.mean()), 2) if len(beyond) else None,
                        "chance (%)": round(100 / cfg["vocab"], 2)})
        positions += [{"slots": slots, "distance": d, "accuracy": float(a), "loss": float(l)}
                      for d, (a, l) in enumerate(zip(accuracy, result["loss"].flip(0)))]
        log.info("known answer, %d slots: %s", slots, summary[-1])
    table, by_position = pd.DataFrame(summary), pd.DataFrame(positions)
    write_table(table, out_dir, "known_answer",
                f"# Retention probe on states with a known answer\n\nShift-register states (the last `slots` tokens' "
                f"{cfg['code_dim']}-value codes, zeros beyond, width {cfg['d_model']}) of {cfg['length']} uniform tokens over "
                f"{cfg['vocab']}; the benchmark's {decoder_description(cfg)}.")
    by_position.to_csv(out_dir / "positions.csv", index=False)
    plot(by_position, cfg, out_dir)
    log.info("wrote %s\n%s", out_dir, table.to_string(index=False))
    return table


main = entry_point("retention_check", main_with, log)


if __name__ == "__main__":
    main()
