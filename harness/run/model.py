"""The backbone every mixer drops into, identical for all of them.

token embedding -> N x [norm -> mixer -> residual; norm -> MLP -> residual] -> final norm -> LM head.
Tasks with continuous inputs or outputs (``input_dim`` / ``output_dim`` > 0, e.g. in-context
regression) swap the token embedding for a linear read-in ``input_dim -> d_model`` and the LM head
for a linear read-out ``d_model -> output_dim`` (as Garg et al. 2022 do around GPT-2); everything
between is unchanged. No positional embedding by default (``position="none"``): each mixer brings its own
notion of position (RoPE, Toeplitz lags, convolutions, recurrences); ``position="learned"`` adds a
learned absolute position embedding ``(max_len, d_model)`` to the read-in, as GPT-2 (and Garg et
al.'s model around it) has. Backbone weights (embedding, MLP, head) use GPT-2's normal(0, 0.02)
initialisation with the MLP output scaled by 1/sqrt(2 N); each mixer keeps its paper's own.
"""
from __future__ import annotations

import math

import torch
from torch import nn

import mixers
from mixers.ops import flops as F


POSITIONS = ("none", "learned")  # model.position: no position embedding, or GPT-2's learned absolute one


class MLP(nn.Module):
    """Channel MLP ``d -> hidden -> d`` with GELU: ``(batch, n, d) -> (batch, n, d)``; ``hidden`` is
    ``int(ratio * d)`` unless given (parameter matching sets it)."""

    def __init__(self, d_model: int, ratio: float, hidden: int | None = None):
        super().__init__()
        self.hidden = int(hidden) if hidden else int(ratio * d_model)
        self.fc = nn.Linear(d_model, self.hidden)
        self.proj = nn.Linear(self.hidden, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(nn.functional.gelu(self.fc(x)))


def make_norm(kind: str, d_model: int) -> nn.Module:
    if kind == "layernorm":
        return nn.LayerNorm(d_model)
    if kind == "rmsnorm":
        return nn.RMSNorm(d_model)
    raise ValueError(f"model.norm must be 'layernorm' or 'rmsnorm', got {kind!r}")


class Block(nn.Module):
    """Pre-norm residual block: ``x + mixer(norm(x))`` then ``x + mlp(norm(x))``."""

    def __init__(self, d_model: int, mixer: nn.Module, mlp_ratio: float, norm: str, mlp_hidden: int | None = None):
        super().__init__()
        self.norm1, self.mixer = make_norm(norm, d_model), mixer
        self.norm2, self.mlp = make_norm(norm, d_model), MLP(d_model, mlp_ratio, mlp_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.mixer(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class SequenceModel(nn.Module):
    """A registered mixer in the shared backbone.

    Tokens: ``tokens (batch, n) -> logits (batch, n, vocab)``. Continuous input (``input_dim > 0``):
    ``(batch, n, input_dim)`` in; continuous output (``output_dim > 0``): ``(batch, n, output_dim)`` out.
    ``train_len``: the longest training input, passed to mixers with a ``train_len`` option left null
    (TMM's initial kernel scale, TNN's decay rate).
    """

    def __init__(self, vocab_size: int, d_model: int, n_layers: int, max_len: int, mixer: str,
                 mixer_options: dict | None = None, mlp_ratio: float = 4.0, norm: str = "layernorm",
                 tie_embeddings: bool = False, input_dim: int = 0, output_dim: int = 0, mlp_hidden: int | None = None,
                 train_len: int | None = None, position: str = "none"):
        super().__init__()
        if position not in POSITIONS:
            raise ValueError(f"model.position must be one of {', '.join(POSITIONS)}, got {position!r}")
        self.position = position
        self.vocab_size, self.d_model, self.n_layers, self.max_len = vocab_size, d_model, n_layers, max_len
        self.mixer_name, self.tie_embeddings = mixer, tie_embeddings
        self.input_dim, self.output_dim = input_dim, output_dim
        if tie_embeddings and (input_dim or output_dim):
            raise ValueError("tie_embeddings needs token inputs and outputs (this task is continuous)")
        options = dict(mixer_options or {})
        # a mixer set up for the training length (a ``train_len`` option left null: TMM's kernel
        # scale, TNN's decay) gets the longest training input; without it, its own fallback (max_len)
        if train_len and "train_len" in mixers.options_of(mixer) and options.get("train_len") is None:
            options["train_len"] = min(train_len, max_len)
        # read-in: a lookup for tokens, a linear map for vectors (Garg et al.'s read_in)
        self.embed = nn.Linear(input_dim, d_model) if input_dim else nn.Embedding(vocab_size, d_model)
        self.position_embed = nn.Embedding(max_len, d_model) if position == "learned" else None  # GPT-2's wpe
        self.blocks = nn.ModuleList(
            Block(d_model, mixers.build(mixer, d_model, max_len, **options), mlp_ratio, norm, mlp_hidden)
            for _ in range(n_layers)
        )
        self.norm = make_norm(norm, d_model)
        # read-out: the LM head for tokens, a linear map with bias for values (Garg et al.'s read_out)
        self.head = nn.Linear(d_model, output_dim) if output_dim else nn.Linear(d_model, vocab_size, bias=False)
        self._init_backbone()
        if tie_embeddings:
            self.head.weight = self.embed.weight

    def _init_backbone(self) -> None:
        nn.init.normal_(self.embed.weight, std=0.02)
        if self.position_embed is not None:
            nn.init.normal_(self.position_embed.weight, std=0.02)
        nn.init.normal_(self.head.weight, std=0.02)
        for layer in (self.embed, self.head):
            if getattr(layer, "bias", None) is not None:
                nn.init.zeros_(layer.bias)
        for block in self.blocks:
            nn.init.normal_(block.mlp.fc.weight, std=0.02)
            nn.init.normal_(block.mlp.proj.weight, std=0.02 / math.sqrt(2 * self.n_layers))
            nn.init.zeros_(block.mlp.fc.bias)
            nn.init.zeros_(block.mlp.proj.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens (batch, n)`` (or ``(batch, n, input_dim)``) -> ``logits (batch, n, vocab)`` (or
        ``(batch, n, output_dim)``)."""
        if tokens.shape[1] > self.max_len:
            raise ValueError(f"input of {tokens.shape[1]} tokens exceeds model.max_len={self.max_len}")
        x = self.read_in(tokens, 0)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))

    def read_in(self, tokens: torch.Tensor, start: int) -> torch.Tensor:
        """Embedded ``tokens (batch, n)`` (or ``(batch, n, input_dim)``) at positions ``start..start+n-1``:
        ``(batch, n, d_model)``; plus the learned position embedding when the model has one."""
        x = self.embed(tokens)
        if self.position_embed is not None:
            n = x.shape[1]
            x = x + self.position_embed(torch.arange(start, start + n, device=x.device))
        return x

    # ---- generation ---------------------------------------------------------------------------
    def prefill(self, tokens: torch.Tensor) -> tuple[torch.Tensor, list[dict]]:
        """Parallel forward over a prompt ``tokens (batch, n)``: logits ``(batch, n, vocab)`` and the
        per-layer decoding states."""
        x, states = self.read_in(tokens, 0), []
        for block in self.blocks:
            y, state = block.mixer.prefill(block.norm1(x))
            x = x + y
            x = x + block.mlp(block.norm2(x))
            states.append(state)
        return self.head(self.norm(x)), states

    def decode(self, token: torch.Tensor, states: list[dict], position: int | None = None) -> tuple[torch.Tensor, list[dict]]:
        """One step: ``token (batch,)`` -> next-token logits ``(batch, vocab)`` and updated states.
        ``position`` (the token's index in the sequence) is needed with a learned position embedding."""
        if self.position_embed is not None and position is None:
            raise ValueError("decode: a model with a learned position embedding needs the token's position")
        x, new = self.read_in(token[:, None], position or 0)[:, 0], []
        for block, state in zip(self.blocks, states):
            y, state = block.mixer.step(block.norm1(x), state)
            x = x + y
            x = x + block.mlp(block.norm2(x))
            new.append(state)
        return self.head(self.norm(x)), new

    def state_bits(self, length: int, bits_per_value: int = 32) -> float:
        """Bits of decoding state after ``length`` tokens, all layers (``Mixer.state_size`` values of
        ``bits_per_value`` bits): beside ``tasks.copy.string_bits`` it says when copying must fail."""
        return float(sum(m.state_size(length) for m in self.mixer_modules) * bits_per_value)

    @property
    def mixer_modules(self) -> list[nn.Module]:
        return [block.mixer for block in self.blocks]

    @property
    def backend(self) -> str:
        return self.blocks[0].mixer.backend

    def parameter_counts(self) -> dict[str, int]:
        """Total (tied weights once), mixer-only, and non-embedding (without embedding and head)."""
        total = sum(p.numel() for p in self.parameters())
        mixer = sum(p.numel() for m in self.mixer_modules for p in m.parameters())
        io = sum(p.numel() for p in self.embed.parameters())
        io += 0 if self.position_embed is None else self.position_embed.weight.numel()
        io += 0 if self.tie_embeddings else sum(p.numel() for p in self.head.parameters())
        return {"total": total, "mixer": mixer, "non_embedding": total - io}

    def flop_terms(self, length: int) -> dict[str, float]:
        """Analytic forward FLOPs for one sequence of ``length`` tokens, by component.

        The token embedding is a lookup (0 FLOPs; a continuous read-in is a linear layer); each block
        adds two norms, its mixer, the MLP and two residual adds; then the final norm and the head
        (LM head or linear read-out).
        """
        n, d, L = length, self.d_model, self.n_layers
        hidden = self.blocks[0].mlp.hidden
        mixer_flops = sum(m.flops(n) for m in self.mixer_modules)
        return {
            "embedding": (F.linear(n, self.input_dim, d) + n * d if self.input_dim else 0.0)
            + (n * d if self.position_embed is not None else 0.0),  # the position embedding's add
            "mixer": mixer_flops,
            # two linear layers, GELU (counted 4 per element) and biases
            "mlp": L * (F.linear(n, d, hidden) + F.linear(n, hidden, d) + 5.0 * n * hidden + n * d),
            "norm_residual": (2 * L + 1) * F.layer_norm(n, d) + 2 * L * n * d,
            "head": F.linear(n, d, self.output_dim) + n * self.output_dim if self.output_dim else F.linear(n, d, self.vocab_size),
        }

    def flops(self, length: int) -> float:
        return float(sum(self.flop_terms(length).values()))

    def parameter_flops(self, length: int) -> float:
        """Per forward pass, independent of batch size (mixers' filters and kernel spectra)."""
        return float(sum(m.parameter_flops(length) for m in self.mixer_modules))

    def step_flops(self, batch: int, length: int) -> float:
        """Training FLOPs of one step on ``(batch, length)`` inputs: 3 x forward."""
        return F.TRAIN_MULTIPLIER * (batch * self.flops(length) + self.parameter_flops(length))
