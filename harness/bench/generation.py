"""Generation throughput: prefill a prompt in parallel, then decode token by token.

    python -m harness.bench.generation [mixers=[tmm,attention]] [generation.prompt_length=1024]

Per mixer, inside the identical backbone: prefill time and tokens/s, per-token decode time and
tokens/s (median of ``repeats``), the decoding state per sequence and layer after the prompt and
after generation, and the largest difference between decoded logits and the parallel forward's
logits over the same tokens. Writes results/generation/<profile>/: measurements.json, table.{md,csv,tex}.
"""
from __future__ import annotations

import logging
import statistics
import sys
import time

import pandas as pd
import torch

from harness.bench.scaling import DTYPES, variant_options
from harness.launch.entry import entry_point
from harness.launch.profile import with_profile
from harness.report.kit import hardware_label, write_table
from harness.run.config import ConfigError, resolve_device
from harness.run.environment import environment
from harness.run.faults import fault_fields
from harness.run.model import SequenceModel
from harness.run.records import results_folder, write_atomic

log = logging.getLogger("mixbench.generation")


def _clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


@torch.no_grad()
def measure_generation(model: SequenceModel, prompt: torch.Tensor, new_tokens: int, repeats: int) -> dict:
    """Median prefill and decode times over ``repeats`` (after one warm-up), and the decode-vs-parallel check."""
    device = prompt.device
    prefill_s, decode_s = [], []
    for i in range(repeats + 1):
        t0 = _clock(device)
        logits, states = model.prefill(prompt)
        t1 = _clock(device)
        tokens = [logits[:, -1].argmax(-1)]
        for _ in range(new_tokens - 1):
            step_logits, states = model.decode(tokens[-1], states)
            tokens.append(step_logits.argmax(-1))
        t2 = _clock(device)
        if i:  # the first pass warms up kernels and allocators
            prefill_s.append(t1 - t0)
            decode_s.append(t2 - t1)
    generated = torch.stack(tokens, dim=1)  # (batch, new_tokens)
    # the same tokens through the parallel forward: decoding must reproduce its logits
    full = model(torch.cat([prompt, generated[:, :-1]], dim=1))[:, prompt.shape[1] - 1:].float()
    logits, states = model.prefill(prompt)
    stepped = [logits[:, -1].float()]
    for t in range(new_tokens - 1):
        step_logits, states = model.decode(generated[:, t], states)
        stepped.append(step_logits.float())
    diff = (torch.stack(stepped, dim=1) - full).abs().max().item()
    batch, n = prompt.shape
    p, d = statistics.median(prefill_s), statistics.median(decode_s)
    return {"prefill_s": p, "prefill_tokens_per_s": batch * n / p,
            "decode_s_per_token": d / max(1, new_tokens - 1),
            "decode_tokens_per_s": batch * max(1, new_tokens - 1) / d,
            "max_abs_logit_diff": diff, "logit_scale": full.abs().max().item()}


def main_with(cfg: dict) -> dict:
    g = cfg["generation"]
    device = resolve_device(g["device"])
    if g["dtype"] not in DTYPES:
        raise ConfigError(f"generation.dtype: must be one of {', '.join(DTYPES)}, got {g['dtype']!r}")
    if device.type != "cuda" and DTYPES[g["dtype"]] is not None:  # the weights are cast on CUDA only
        raise ConfigError(f"generation.dtype: {g['dtype']} weights are used on CUDA only; this device is {device}: "
                          "set generation.dtype=fp32")
    result = {"config": cfg, "environment": environment(device), "rows": []}
    for name in cfg["mixers"]:
        mixer, options = variant_options({"mixer": name})
        total = g["prompt_length"] + g["new_tokens"]
        torch.manual_seed(0)
        model = SequenceModel(g["vocab_size"], g["d_model"], g["n_layers"], total, mixer, options).eval()
        dtype = DTYPES[g["dtype"]] if device.type == "cuda" else None  # inference weights in bf16 on GPU
        model = model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
        layer = model.blocks[0].mixer
        row = {"mixer": name, "backend": model.backend, "params": model.parameter_counts()["total"]}
        if not layer.supports_decode:
            row["status"] = "no decode path"
            result["rows"].append(row)
            continue
        gen = torch.Generator(device=device).manual_seed(0)
        prompt = torch.randint(0, g["vocab_size"], (g["batch_size"], g["prompt_length"]), generator=gen, device=device)
        try:
            row.update(measure_generation(model, prompt, g["new_tokens"], g["repeats"]))
            row.update(status="ok", state_after_prompt=layer.state_size(g["prompt_length"]),
                       state_after_generation=layer.state_size(total))
            log.info("%-10s prefill %8.0f tok/s, decode %8.0f tok/s, max |logit diff| %.2e", name,
                     row["prefill_tokens_per_s"], row["decode_tokens_per_s"], row["max_abs_logit_diff"])
        except Exception as err:  # recorded (oom or failed); the other mixers still run
            row.update(fault_fields(err))
            log.warning("%s %s: %s", name, row["status"], row["error"])
        result["rows"].append(row)
        del model
    out_dir = results_folder(cfg["results_dir"], "generation") / g["profile"]
    write_atomic(out_dir / "measurements.json", result)
    table = pd.DataFrame([{
        "mixer": r["mixer"], "backend": r["backend"], "params": r["params"], "status": r["status"],
        "prefill tokens/s": f"{r['prefill_tokens_per_s']:,.0f}" if r["status"] == "ok" else "-",
        "decode tokens/s": f"{r['decode_tokens_per_s']:,.0f}" if r["status"] == "ok" else "-",
        "decode ms/token": f"{1e3 * r['decode_s_per_token']:.2f}" if r["status"] == "ok" else "-",
        "state/layer after prompt (values)": f"{r['state_after_prompt']:,}" if r["status"] == "ok" else "-",
        "state/layer after generation": f"{r['state_after_generation']:,}" if r["status"] == "ok" else "-",
        "max |decode - parallel| logit": f"{r['max_abs_logit_diff']:.1e}" if r["status"] == "ok" else "-",
    } for r in result["rows"]])
    header = (f"# Generation throughput\n\n{hardware_label(result['environment'])}, torch "
              f"{result['environment']['packages'].get('torch')}, {g['dtype']}. Backbone d_model {g['d_model']}, "
              f"{g['n_layers']} layers; batch {g['batch_size']}, prompt {g['prompt_length']} tokens, then "
              f"{g['new_tokens']} greedy tokens; median of {g['repeats']} after one warm-up. State: values per "
              f"sequence and layer (KV cache, input history or recurrent state).")
    for path in write_table(table, out_dir, "table", header):
        log.info("wrote %s", path)
    return result


main = entry_point("generation", main_with, log)


if __name__ == "__main__":
    sys.argv = with_profile(sys.argv, "generation")
    main()
