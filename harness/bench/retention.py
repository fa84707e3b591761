"""Information retention: how much of its input one token's hidden state holds, for every mixer.

    python -m harness.bench.retention benchmark=tmm_claims_cpu        # conf/retention.yaml
    python -m harness.bench.retention runs=[<run id>,...] layer=1 profile=mine

After the TMM paper's probe (its authors' experiment 008): freeze a model (a finished run's saved
weights, and the same config at initialisation as the baseline), feed it ``length`` tokens and
take the hidden state of one token, the last, after block ``layer`` (null: the last block; the
residual stream before the final norm, as the authors take a block's output). A small decoder, the
same for every mixer, is trained to reconstruct all ``length`` input tokens from that one vector:

    ReconstructionDecoder: LayerNorm(d_model) -> Linear(d_model, width); + a learned embedding of
    the position p to reconstruct (width); then ``depth`` x [GELU, Linear(width, width)], GELU,
    Linear(width, vocab). Output (batch, length, vocab): position p's logits from (state, p) only.

(The authors' decoder is a 16-layer causal Toeplitz mixer fed a sliding-window unrolling of the
vector; a position-wise MLP decoder here adds no sequence mixing of its own, so that what it reads
out is what the state holds, whichever mixer made it.) The decoder trains with AdamW on
``train_samples`` encoded sequences for ``steps`` steps and is measured on ``eval_samples`` others:
cross-entropy (nats) and accuracy per position and overall. Inputs: ``text`` (windows of the run's
text corpus: lm_text / copy_text runs; training windows from the training stream, measured ones from
the validation stream) and ``random`` (tokens uniform over the model's vocabulary). Inputs are drawn
on the CPU (the same on every machine); the model and decoder run on ``device``. Writes
``<results_dir>/retention/<profile>/``: ``retention.{md,csv,tex}`` (overall), ``positions.csv`` (per
position, with distance = length - 1 - position from the embedded token) and
``retention.{png,pdf}`` (accuracy against distance, one panel per input kind and task).
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from torch.nn import functional as TF

from harness.bench.trained import RANDOM, models
from harness.launch.entry import entry_point
from harness.report.kit import mixer_colors, save_figure, write_table
from harness.run.config import ConfigError, resolve_device
from harness.run.model import SequenceModel
from harness.run.records import results_folder

log = logging.getLogger("mixbench.retention")
INPUTS = ("text", "random")


class ReconstructionDecoder(nn.Module):
    """``state (batch, d_model)`` -> logits ``(batch, length, vocab)`` for every input position."""

    def __init__(self, d_model: int, length: int, vocab: int, width: int, depth: int):
        super().__init__()
        self.read = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, width))
        self.position = nn.Embedding(length, width)
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [nn.GELU(), nn.Linear(width, width)]
        self.mlp = nn.Sequential(*layers, nn.GELU(), nn.Linear(width, vocab))

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        h = self.read(state)[:, None, :] + self.position.weight[None]  # (batch, length, width)
        return self.mlp(h)


@torch.no_grad()
def hidden_state(model: SequenceModel, tokens: torch.Tensor, layer: int | None, position: int = -1,
                 batch_size: int = 256) -> torch.Tensor:
    """The residual stream after block ``layer`` (1-based; None: the last) at ``position`` of ``tokens (batch, n)``:
    ``(batch, d_model)``."""
    layer = model.n_layers if layer is None else layer
    if not 1 <= layer <= model.n_layers:
        raise ConfigError(f"layer: must be null (the last) or in [1, {model.n_layers}], got {layer}")
    out = []
    for start in range(0, len(tokens), batch_size):
        x = model.read_in(tokens[start:start + batch_size], 0)
        for block in model.blocks[:layer]:
            x = block(x)
        out.append(x[:, position])
    return torch.cat(out)


def input_tokens(kind: str, task, count: int, length: int, split: str, generator: torch.Generator) -> torch.Tensor | None:
    """``(count, length)`` tokens: text windows of the run's corpus (None when the task has no text), or uniform ones."""
    if kind == "text":
        if not hasattr(task, "random_windows"):
            return None
        return task.random_windows(split, count, length, generator)
    return torch.randint(0, task.vocab_size, (count, length), generator=generator)


def per_position(logits: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy (nats) and accuracy at each position: two ``(length,)`` tensors."""
    loss = TF.cross_entropy(logits.transpose(1, 2), tokens, reduction="none").mean(0)
    accuracy = (logits.argmax(-1) == tokens).float().mean(0)
    return loss, accuracy


def train_decoder(train_states: torch.Tensor, train_tokens: torch.Tensor, vocab: int, cfg: dict,
                  generator: torch.Generator) -> ReconstructionDecoder:
    """A decoder fitted to reconstruct ``train_tokens (m, length)`` from ``train_states (m, d_model)``."""
    d = cfg["decoder"]
    with torch.random.fork_rng(devices=[]):  # the decoder's initialisation, the same for every mixer; caller's RNG untouched
        torch.manual_seed(d["seed"])
        decoder = ReconstructionDecoder(train_states.shape[1], train_tokens.shape[1], vocab, d["width"], d["depth"])
    decoder = decoder.to(train_states.device)
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=d["lr"], weight_decay=d["weight_decay"])
    for step in range(d["steps"]):
        for group in optimizer.param_groups:  # cosine decay to 10%
            group["lr"] = d["lr"] * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / max(1, d["steps"]))))
        pick = torch.randint(0, len(train_states), (d["batch_size"],), generator=generator).to(train_states.device)
        logits = decoder(train_states[pick])
        loss = TF.cross_entropy(logits.flatten(0, 1), train_tokens[pick].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return decoder.eval()


def measure(model: SequenceModel, task, kind: str, cfg: dict) -> dict | None:
    """Retention of one frozen model on one input kind: overall and per-position loss and accuracy."""
    length = cfg["length"] or task.max_train_input_len()
    if length > model.max_len:
        raise ConfigError(f"length: {length} exceeds the model's max_len={model.max_len}")
    data = torch.Generator().manual_seed(cfg["seed"])
    train_tokens = input_tokens(kind, task, cfg["train_samples"], length, "train", data)
    if train_tokens is None:
        return None
    eval_tokens = input_tokens(kind, task, cfg["eval_samples"], length, "validation", data)
    device = next(model.parameters()).device
    train_tokens, eval_tokens = train_tokens.to(device), eval_tokens.to(device)
    train_states = hidden_state(model, train_tokens, cfg["layer"])
    eval_states = hidden_state(model, eval_tokens, cfg["layer"])
    decoder = train_decoder(train_states, train_tokens, task.vocab_size, cfg, data)
    with torch.no_grad():
        loss, accuracy = per_position(decoder(eval_states), eval_tokens)
    return {"length": length, "loss": float(loss.mean()), "accuracy": float(accuracy.mean()),
            "loss_per_position": loss.tolist(), "accuracy_per_position": accuracy.tolist()}


def plot(positions: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Reconstruction accuracy against distance from the embedded token, one panel per (input kind, task
    the model was trained on): one colour per mixer, solid trained, dashed the same model at initialisation."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    panels = [(k, t) for k in INPUTS for t in sorted(set(positions["task"])) if
              ((positions["inputs"] == k) & (positions["task"] == t)).any()]
    mixers = sorted(set(positions["mixer"]))
    colors = mixer_colors(mixers)
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.2 * rows), squeeze=False, sharey=True)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (kind, task) in zip(axes.flat, panels):
        part = positions[(positions["inputs"] == kind) & (positions["task"] == task)]
        for (mixer, state), g in part.groupby(["mixer", "state"], sort=True):
            g = g.sort_values("distance")
            ax.plot(g["distance"], g["accuracy"], color=colors[mixer], linestyle="--" if state == RANDOM else "-",
                    linewidth=0.9)
        ax.set_title(f"{kind} inputs, {task} models", fontsize=7)
        ax.set_xlabel("distance from the embedded token", fontsize=6)
        ax.tick_params(labelsize=6)
        ax.set_ylim(0, 1)
    for row in axes:
        row[0].set_ylabel("reconstruction accuracy", fontsize=6)
    handles = [Line2D([], [], color=colors[m], label=m) for m in mixers] + [
        Line2D([], [], color="black", label="trained"), Line2D([], [], color="black", linestyle="--", label=RANDOM)]
    fig.legend(handles=handles, fontsize=6, frameon=False, loc="lower center", ncol=len(handles),
               bbox_to_anchor=(0.5, -0.04))
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return save_figure(fig, out_dir, "retention")


def decoder_description(cfg: dict) -> str:
    """How the decoder was set up and trained, for a table's header."""
    d = cfg["decoder"]
    return (f"decoder LayerNorm -> Linear({d['width']}) + position embedding -> {d['depth']} x [GELU, Linear] -> vocab, "
            f"{d['steps']} AdamW steps of {d['batch_size']} on {cfg['train_samples']} sequences, measured on "
            f"{cfg['eval_samples']} others")


def check(cfg: dict) -> None:
    unknown = sorted(set(cfg["inputs"]) - set(INPUTS))
    if unknown or not cfg["inputs"]:
        raise ConfigError(f"inputs: must be a non-empty list of {', '.join(INPUTS)}, got {cfg['inputs']!r}")
    for field in ("train_samples", "eval_samples"):
        if not isinstance(cfg[field], int) or cfg[field] < 1:
            raise ConfigError(f"{field}: must be an integer >= 1, got {cfg[field]!r}")
    for field in ("width", "steps", "batch_size"):
        if not isinstance(cfg["decoder"][field], int) or cfg["decoder"][field] < 1:
            raise ConfigError(f"decoder.{field}: must be an integer >= 1, got {cfg['decoder'][field]!r}")
    if cfg["length"] is not None and (not isinstance(cfg["length"], int) or cfg["length"] < 1):
        raise ConfigError(f"length: must be null (each run's training length) or an integer >= 1, got {cfg['length']!r}")


def main_with(cfg: dict) -> pd.DataFrame:
    """Retention of every model ``cfg`` names on every input kind; writes tables and the plot, returns the summary."""
    check(cfg)
    out_dir = results_folder(cfg["results_dir"], "retention") / cfg["profile"]
    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])
    device = resolve_device(cfg["device"])
    summary, positions = [], []
    for state, model, run_cfg, task, stem in models(cfg):
        model.to(device)
        for kind in cfg["inputs"]:
            result = measure(model, task, kind, cfg)
            if result is None:
                log.info("%s: task %s has no text corpus; %s inputs skipped", stem, task.name, kind)
                continue
            base = {"source": stem, "task": task.name, "mixer": run_cfg["mixer"]["name"], "state": state,
                    "params": sum(p.numel() for p in model.parameters()), "d_model": model.d_model,
                    "layer": cfg["layer"] or model.n_layers, "inputs": kind, "length": result["length"]}
            summary.append({**base, "accuracy": round(result["accuracy"], 4), "loss": round(result["loss"], 4)})
            n = result["length"]
            positions += [{**base, "position": p, "distance": n - 1 - p, "accuracy": a, "loss": l}
                          for p, (a, l) in enumerate(zip(result["accuracy_per_position"], result["loss_per_position"]))]
            log.info("%s (%s, %s inputs): accuracy %.3f, loss %.3f", stem, state, kind, result["accuracy"], result["loss"])
        model.cpu()
    if not summary:
        raise ConfigError("inputs: no model had inputs of these kinds (text needs lm_text / copy_text runs)")
    table, by_position = pd.DataFrame(summary), pd.DataFrame(positions)
    write_table(table, out_dir, "retention",
                f"# Information retention: all {table['length'].max()} inputs reconstructed from one hidden state "
                f"({cfg['profile']})\n\nState of the last token after block {cfg['layer'] or 'L (the last)'}; "
                f"{decoder_description(cfg)}.")
    by_position.to_csv(out_dir / "positions.csv", index=False)
    plot(by_position, out_dir)
    log.info("wrote %s\n%s", out_dir, table.to_string(index=False))
    return table


main = entry_point("retention", main_with, log)


if __name__ == "__main__":
    main()
