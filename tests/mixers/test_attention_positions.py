"""Attention's position options (Jelassi et al.'s comparison): RoPE, NoPE and Hard-ALiBi against a plain reference."""
from __future__ import annotations

import math

import pytest
import torch
from einops import rearrange

import mixers
from mixers.attention import hard_alibi_mask


def test_hard_alibi_mask_by_hand():
    mask = hard_alibi_mask(heads=3, masked_heads=2, queries=4, keys=4, device="cpu")
    causal = torch.ones(4, 4).tril().bool()
    assert torch.equal(mask[0], torch.eye(4, dtype=torch.bool))  # head 0: itself only
    assert torch.equal(mask[1], causal & ~torch.ones(4, 4).tril(-2).bool())  # head 1: itself and the one before
    assert torch.equal(mask[2], causal)  # an unmasked head: the whole causal past
    # one query at position 5 of 6 keys (decoding): the last row of the square mask
    assert torch.equal(hard_alibi_mask(3, 2, 1, 6, "cpu"), hard_alibi_mask(3, 2, 6, 6, "cpu")[:, -1:])


def reference(mixer, x: torch.Tensor) -> torch.Tensor:
    """Softmax attention written out: no rotation, the Hard-ALiBi windows as an explicit mask."""
    n = x.shape[1]
    q, k, v = rearrange(mixer.qkv(x), "b n (three h e) -> three b h n e", three=3, h=mixer.heads)
    scores = q @ k.transpose(-1, -2) / math.sqrt(mixer.head_dim)  # (b, h, n, n)
    lag = torch.arange(n)[:, None] - torch.arange(n)[None, :]
    allowed = (lag >= 0).expand(mixer.heads, n, n).clone()
    for h in range(mixer.masked_heads):
        allowed[h] &= lag <= h
    y = scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v
    return mixer.out_proj(rearrange(y, "b h n e -> b n (h e)"))


@pytest.mark.parametrize("position,masked_heads", [("nope", 2), ("hard_alibi", 0), ("hard_alibi", 2), ("hard_alibi", 4)])
def test_nope_and_hard_alibi_equal_the_written_out_attention(position, masked_heads):
    torch.manual_seed(0)
    mixer = mixers.build("attention", 16, 32, heads=4, position=position, masked_heads=masked_heads).double()
    x = torch.randn(2, 12, 16, dtype=torch.float64, requires_grad=True)
    out, ref = mixer(x), reference(mixer, x)
    assert torch.allclose(out, ref, atol=1e-10)
    g = torch.randn_like(out)
    grads = torch.autograd.grad((out * g).sum(), [x, mixer.qkv.weight])
    ref_grads = torch.autograd.grad((ref * g).sum(), [x, mixer.qkv.weight])
    assert all(torch.allclose(a, b, atol=1e-10) for a, b in zip(grads, ref_grads))


def test_nope_is_blind_to_position_and_rope_is_not():
    torch.manual_seed(0)
    x = torch.randn(1, 6, 16, dtype=torch.float64)
    shuffled = torch.cat([x[:, [2, 0, 1]], x[:, 3:]], dim=1)  # reorder the past of positions 3..5
    nope = mixers.build("attention", 16, 8, heads=2, position="nope").double()
    rope = mixers.build("attention", 16, 8, heads=2).double()
    with torch.no_grad():
        assert torch.allclose(nope(x)[:, 3:], nope(shuffled)[:, 3:], atol=1e-12)
        assert not torch.allclose(rope(x)[:, 3:], rope(shuffled)[:, 3:], atol=1e-6)


@pytest.mark.parametrize("options,message", [({"position": "alibi"}, "position"),
                                             ({"position": "hard_alibi", "masked_heads": 5}, "masked_heads")])
def test_bad_position_options_name_the_option(options, message):
    with pytest.raises(ValueError, match=message):
        mixers.build("attention", 16, 8, heads=4, **options)


@pytest.mark.parametrize("masked_heads", [1, 2, 4])
@pytest.mark.parametrize("prompt", [1, 3, 17])
def test_hard_alibi_is_causal_and_decodes_as_in_parallel(masked_heads, prompt):
    """Hard-ALiBi is not a case of the generic contract tests (its FLOPs reach the declared n^2 slope
    only beyond the lengths those check), so its contract is checked here."""
    torch.manual_seed(0)
    mixer = mixers.build("attention", 16, 32, heads=4, position="hard_alibi", masked_heads=masked_heads).double().eval()
    x = torch.randn(2, 24, 16, dtype=torch.float64, requires_grad=True)
    out = mixer(x)
    grad = torch.autograd.grad(out[:, 9].sum(), x)[0]
    assert grad[:, 10:].abs().max() == 0 and grad[:, :10].abs().max() > 0
    with torch.no_grad():
        y, state = mixer.prefill(x[:, :prompt])
        assert torch.allclose(y, out[:, :prompt], atol=1e-10)
        for t in range(prompt, 24):
            y_t, state = mixer.step(x[:, t], state)
            assert torch.allclose(y_t, out[:, t], atol=1e-9), t


def test_hard_alibi_matmul_flops_equal_the_counted_ones():
    from torch.utils.flop_counter import FlopCounterMode
    mixer = mixers.build("attention", 32, 64, heads=4, position="hard_alibi", masked_heads=2)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        mixer(torch.randn(3, 40, 32))
    assert counter.get_total_flops() == pytest.approx(3 * mixer.flop_terms(40)["matmul"], rel=0.01)
    only_windows = mixers.build("attention", 32, 64, heads=4, position="hard_alibi", masked_heads=4)
    assert only_windows.flop_terms(40)["attention"] == 0  # every head windowed: no quadratic term
