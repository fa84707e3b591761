"""The backbone every mixer drops into, identical for all of them.

token embedding -> N x [norm -> mixer -> residual; norm -> MLP -> residual] -> final norm -> LM head.

Options (conf/model/small.yaml holds their defaults, which are the layout above):
- ``short_conv: k > 0``: Zoology's BaseConv (``ShortConv``: a depthwise causal convolution of ``k`` taps
  gating a linear projection, plus its input) in a pre-norm residual sublayer before the mixer of
  every block (Zoology alternates BaseConv layers with mixer layers; here each block has both);
- ``mlp_ratio: 0``: no MLP sublayer (Zoology's recall models: their state mixer is the identity);
- ``order: mlp_first``: the MLP sublayer before the mixer's (the TMM authors' MixerBlock);
  ``mlp_activation``: ``gelu`` or ``silu``; ``final_norm: false``: no norm before the head;
- ``init`` (``INITS``): ``reference`` (below), ``normal_002`` or ``kaiming`` (``initialise``);
- ``stack``: a mixer per layer (a hybrid, ``harness.run.stack``: ``gla×2+attention``); FLOPs, parameters,
  decoding state and decode run over the blocks, so they sum over the stack's layers;
- ``channel_mixer`` (``CHANNEL_MIXERS``): the MLP above, or ``SwiGLU`` (Llama's, MAD's; no biases).
Tasks with continuous inputs or outputs (``input_dim`` / ``output_dim`` > 0, e.g. in-context
regression) swap the token embedding for a linear read-in ``input_dim -> d_model`` and the LM head
for a linear read-out ``d_model -> output_dim`` (as Garg et al. 2022 do around GPT-2); everything
between is unchanged. No positional embedding by default (``position="none"``): each mixer brings its own
notion of position (RoPE, Toeplitz lags, convolutions, recurrences); ``position="learned"`` adds a
learned absolute position embedding ``(max_len, d_model)`` to the read-in, as GPT-2 (and Garg et
al.'s model around it) has. Backbone weights (embedding, MLP, head) use GPT-2's normal(0, 0.02)
initialisation with the MLP output scaled by 1/sqrt(2 N); each mixer keeps its paper's own.
``readout="last"`` (a task's ``readout``, MAD's compression): every output is decoded from the last
position's state alone (``LastStateDecoder``, mad-lab's ``AutoEncoder`` with ``global_pool='last'``)
before the final norm and head.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from harness.run.stack import display_name
import mixers
from mixers.ops import flops as F


POSITIONS = ("none", "learned")  # model.position: no position embedding, or GPT-2's learned absolute one
ORDERS = ("mixer_first", "mlp_first")  # model.order: which sublayer of a block comes first
ACTIVATIONS = {"gelu": nn.functional.gelu, "silu": nn.functional.silu}  # model.mlp_activation
# model.channel_mixer: the two-layer MLP (with model.mlp_activation, GELU by default), or SwiGLU (Llama's, MAD's)
CHANNEL_MIXERS = ("mlp", "swiglu")
# model.init: each mixer's own initialisation inside the backbone's GPT-2 one (reference); or one
# policy for every linear layer and embedding, mixers' included (``initialise``)
INITS = ("reference", "normal_002", "kaiming")
# linear layers whose output is added to the residual stream: the policies scale them as GPT-2 does
RESIDUAL_OUTPUTS = ("out_proj", "o_proj", "mlp.proj")


class MLP(nn.Module):
    """Channel MLP ``d -> hidden -> d`` with GELU (or SiLU): ``(batch, n, d) -> (batch, n, d)``;
    ``hidden`` is ``int(ratio * d)`` unless given (parameter matching sets it)."""

    kind = "mlp"

    def __init__(self, d_model: int, ratio: float, hidden: int | None = None, activation: str = "gelu"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"model.mlp_activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
        self.d_model = d_model
        self.hidden = int(hidden) if hidden else int(ratio * d_model)
        self.activation = activation
        self.fc = nn.Linear(d_model, self.hidden)
        self.proj = nn.Linear(self.hidden, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(ACTIVATIONS[self.activation](self.fc(x)))

    @property
    def parameters_per_unit(self) -> int:
        """Parameters one more hidden unit adds: a row of ``fc`` with its bias, a column of ``proj``."""
        return 2 * self.d_model + 1

    def flops(self, length: int) -> float:
        """Two linear layers, the activation (4 per element) and both biases."""
        n, d, h = length, self.d_model, self.hidden
        return F.linear(n, d, h) + F.linear(n, h, d) + 5.0 * n * h + n * d


def swiglu_hidden(d_model: int, ratio: float, multiple_of: int) -> int:
    """Llama's SwiGLU width (meta-llama/llama, model.py, FeedForward): two thirds of the MLP's
    ``int(ratio * d)``, truncated, then rounded up to a multiple of ``multiple_of`` (Llama: 256;
    MAD's SwiGLU, athms/mad-lab mad/model/layers/mlp.py: 16, our default), so that its three
    matrices hold about as many parameters as the MLP's two."""
    hidden = int(2 * int(ratio * d_model) / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


class SwiGLU(nn.Module):
    """Shazeer's SwiGLU channel mixer as Llama and MAD have it: ``proj(silu(gate(x)) * up(x))``, three
    linear layers ``d -> hidden, d -> hidden, hidden -> d`` without biases: ``(batch, n, d) -> (batch, n, d)``.
    ``hidden`` is ``swiglu_hidden(d, ratio, multiple_of)`` unless given (parameter matching sets it)."""

    kind = "swiglu"

    def __init__(self, d_model: int, ratio: float, hidden: int | None = None, multiple_of: int = 16):
        super().__init__()
        if multiple_of < 1:
            raise ValueError(f"model.swiglu_multiple_of must be an integer >= 1, got {multiple_of!r}")
        self.d_model = d_model
        self.hidden = int(hidden) if hidden else swiglu_hidden(d_model, ratio, multiple_of)
        self.activation = "silu"
        self.gate = nn.Linear(d_model, self.hidden, bias=False)
        self.up = nn.Linear(d_model, self.hidden, bias=False)
        self.proj = nn.Linear(self.hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(nn.functional.silu(self.gate(x)) * self.up(x))

    @property
    def parameters_per_unit(self) -> int:
        """Parameters one more hidden unit adds: a row of ``gate`` and of ``up``, a column of ``proj``."""
        return 3 * self.d_model

    def flops(self, length: int) -> float:
        """Three linear layers, SiLU (4 per element) and the gate's product."""
        n, d, h = length, self.d_model, self.hidden
        return 2 * F.linear(n, d, h) + F.linear(n, h, d) + 5.0 * n * h


def make_channel_mixer(kind: str, d_model: int, ratio: float, hidden: int | None, activation: str,
                       swiglu_multiple_of: int) -> nn.Module:
    """The block's channel mixer (``model.channel_mixer``, ``CHANNEL_MIXERS``)."""
    if kind == "mlp":
        return MLP(d_model, ratio, hidden, activation)
    if kind == "swiglu":
        return SwiGLU(d_model, ratio, hidden, swiglu_multiple_of)
    raise ValueError(f"model.channel_mixer must be one of {', '.join(CHANNEL_MIXERS)}, got {kind!r}")


class ShortConv(nn.Module):
    """Zoology's BaseConv with a short kernel (zoology/mixers/base_conv.py, ShortConvolution in
    zoology/mixers/convolution.py): ``y = conv_k(u) * (W u + b) + u``, ``conv_k`` a depthwise causal
    convolution of ``kernel_size`` taps with a bias (``nn.Conv1d(groups=d, padding=k - 1)``, the
    last ``k - 1`` outputs dropped). ``u (batch, n, d) -> y (batch, n, d)``; its decoding state is
    the last ``k - 1`` inputs, ``(batch, d, k - 1)``."""

    def __init__(self, d_model: int, kernel_size: int):
        super().__init__()
        if kernel_size < 1:
            raise ValueError(f"model.short_conv must be 0 (off) or a kernel size >= 1, got {kernel_size!r}")
        self.d_model, self.kernel_size = d_model, kernel_size
        self.conv = nn.Conv1d(d_model, d_model, kernel_size, groups=d_model, padding=kernel_size - 1)
        self.projection = nn.Linear(d_model, d_model)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        n = u.shape[1]
        conv = self.conv(u.transpose(1, 2))[..., :n].transpose(1, 2)
        return conv * self.projection(u) + u

    def prefill(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward(u)`` and the state after it: the last ``k - 1`` inputs, zeros before the start."""
        past = nn.functional.pad(u.transpose(1, 2), (self.kernel_size - 1, 0))[..., u.shape[1]:]
        return self.forward(u), past

    def step(self, u: torch.Tensor, past: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One token ``u (batch, d)`` after ``past (batch, d, k - 1)``: ``(y (batch, d), new past)``."""
        window = torch.cat([past, u[:, :, None]], dim=-1)  # (batch, d, k): oldest tap first, as Conv1d's weight
        conv = (window * self.conv.weight[:, 0, :]).sum(-1) + self.conv.bias
        return conv * self.projection(u) + u, window[:, :, 1:]

    def flops(self, length: int) -> float:
        """The convolution (and its bias), the projection (and its bias), the gate's product and the skip add."""
        n, d = length, self.d_model
        return F.causal_depthwise_conv(n, d, self.kernel_size) + F.linear(n, d, d) + 4.0 * n * d

    def state_size(self, length: int) -> int:
        return self.d_model * (self.kernel_size - 1)


def make_norm(kind: str, d_model: int) -> nn.Module:
    if kind == "layernorm":
        return nn.LayerNorm(d_model)
    if kind == "rmsnorm":
        return nn.RMSNorm(d_model)
    raise ValueError(f"model.norm must be 'layernorm' or 'rmsnorm', got {kind!r}")


READOUTS = ("sequence", "last")  # a task's readout: each position's own state, or the last one's for all


def sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
    """``(length, dim)``: fairseq's sinusoidal position embedding, as mad-lab's ``posemb_sincos_1d``
    (sines of ``dim // 2`` geometric frequencies, then their cosines; a zero column for odd ``dim``)."""
    half = dim // 2
    frequency = torch.exp(torch.arange(half, dtype=torch.float) * -(math.log(10000) / max(half - 1, 1)))
    angle = torch.arange(length, dtype=torch.float)[:, None] * frequency[None]
    table = torch.cat([torch.sin(angle), torch.cos(angle)], 1)
    return torch.cat([table, torch.zeros(length, dim - 2 * half)], 1)


class LastStateDecoder(nn.Module):
    """MAD's compression decoder (mad-lab's ``AutoEncoder.decode``): the last position's state ``(batch,
    d)`` plus a fixed sinusoidal embedding of each output position, through norm -> linear -> GELU ->
    norm -> linear -> GELU (non-expanding): ``(batch, n, d) -> (batch, n, d)``, every output position
    decoded from ``x[:, -1]`` alone."""

    def __init__(self, d_model: int, max_len: int, norm: str):
        super().__init__()
        self.register_buffer("positions", sinusoidal_positions(max_len, d_model), persistent=False)
        self.layers = nn.Sequential(make_norm(norm, d_model), nn.Linear(d_model, d_model), nn.GELU(),
                                    make_norm(norm, d_model), nn.Linear(d_model, d_model), nn.GELU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[1]
        return self.layers(x[:, -1:] + self.positions[:n])

    def flops(self, length: int) -> float:
        """Per sequence: the position add, two norms, two linear layers with biases, two GELUs (4 per element)."""
        n, d = length, self.positions.shape[1]
        return n * d + 2 * (F.layer_norm(n, d) + F.linear(n, d, d) + n * d + 4.0 * n * d)


class Block(nn.Module):
    """Pre-norm residual block: ``x + mixer(norm(x))`` then ``x + mlp(norm(x))`` (``order="mlp_first"``:
    the MLP's sublayer first); without an MLP (``mlp_ratio`` 0, no ``mlp_hidden``) the mixer's alone.
    ``mlp`` is the channel mixer (``channel_mixer``: ``MLP`` or ``SwiGLU``).
    ``short_conv > 0`` puts ``x + ShortConv(norm(x))`` right before the mixer's sublayer."""

    def __init__(self, d_model: int, mixer: nn.Module, mlp_ratio: float, norm: str, mlp_hidden: int | None = None,
                 short_conv: int = 0, order: str = "mixer_first", mlp_activation: str = "gelu",
                 channel_mixer: str = "mlp", swiglu_multiple_of: int = 16):
        super().__init__()
        if order not in ORDERS:
            raise ValueError(f"model.order must be one of {', '.join(ORDERS)}, got {order!r}")
        self.order = order
        self.norm1, self.mixer = make_norm(norm, d_model), mixer
        has_mlp = bool(mlp_hidden) or mlp_ratio > 0
        self.norm2 = make_norm(norm, d_model) if has_mlp else None
        self.mlp = make_channel_mixer(channel_mixer, d_model, mlp_ratio, mlp_hidden, mlp_activation,
                                      swiglu_multiple_of) if has_mlp else None
        # built last, so that a model without one draws the same random numbers as before the option
        self.conv_norm = make_norm(norm, d_model) if short_conv else None
        self.short_conv = ShortConv(d_model, short_conv) if short_conv else None

    def channel(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.mlp is None else x + self.mlp(self.norm2(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.order == "mlp_first":
            x = self.channel(x)
        if self.short_conv is not None:
            x = x + self.short_conv(self.conv_norm(x))
        x = x + self.mixer(self.norm1(x))
        return self.channel(x) if self.order == "mixer_first" else x

    def prefill(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """``forward(x)`` for ``x (batch, n, d)`` and the block's decoding state: the mixer's
        (``"mixer"``) and the short convolution's last inputs (``"short_conv"``, when there is one)."""
        state = {}
        if self.order == "mlp_first":
            x = self.channel(x)
        if self.short_conv is not None:
            y, state["short_conv"] = self.short_conv.prefill(self.conv_norm(x))
            x = x + y
        y, state["mixer"] = self.mixer.prefill(self.norm1(x))
        x = x + y
        return (self.channel(x) if self.order == "mixer_first" else x), state

    def step(self, x: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        """One token ``x (batch, d)`` -> ``(batch, d)`` and the updated state (as ``prefill``'s)."""
        new = {}
        if self.order == "mlp_first":
            x = self.channel(x)
        if self.short_conv is not None:
            y, new["short_conv"] = self.short_conv.step(self.conv_norm(x), state["short_conv"])
            x = x + y
        y, new["mixer"] = self.mixer.step(self.norm1(x), state["mixer"])
        x = x + y
        return (self.channel(x) if self.order == "mixer_first" else x), new


class SequenceModel(nn.Module):
    """A registered mixer in the shared backbone, or a hybrid stack of them (a mixer per layer).

    Tokens: ``tokens (batch, n) -> logits (batch, n, vocab)``. Continuous input (``input_dim > 0``):
    ``(batch, n, input_dim)`` in; continuous output (``output_dim > 0``): ``(batch, n, output_dim)`` out.
    ``train_len``: the longest training input, passed to mixers with a ``train_len`` option left null
    (TMM's initial kernel scale, TNN's decay rate). ``stack``: one ``{"name": <mixer>, <option>: ...}``
    per layer (``n_layers`` of them; ``harness.run.stack``), in place of ``mixer`` and
    ``mixer_options`` in every layer. ``channel_mixer``: ``mlp`` or ``swiglu`` (``CHANNEL_MIXERS``).
    """

    def __init__(self, vocab_size: int, d_model: int, n_layers: int, max_len: int, mixer: str,
                 mixer_options: dict | None = None, mlp_ratio: float = 4.0, norm: str = "layernorm",
                 tie_embeddings: bool = False, input_dim: int = 0, output_dim: int = 0, mlp_hidden: int | None = None,
                 train_len: int | None = None, position: str = "none", init: str = "reference", short_conv: int = 0,
                 order: str = "mixer_first", mlp_activation: str = "gelu", final_norm: bool = True,
                 readout: str = "sequence", stack: list[dict] | None = None, channel_mixer: str = "mlp",
                 swiglu_multiple_of: int = 16):
        super().__init__()
        if readout not in READOUTS:
            raise ValueError(f"the task's readout must be one of {', '.join(READOUTS)}, got {readout!r}")
        if position not in POSITIONS:
            raise ValueError(f"model.position must be one of {', '.join(POSITIONS)}, got {position!r}")
        if init not in INITS:
            raise ValueError(f"model.init must be one of {', '.join(INITS)}, got {init!r}")
        self.position, self.init, self.short_conv = position, init, short_conv
        self.vocab_size, self.d_model, self.n_layers, self.max_len = vocab_size, d_model, n_layers, max_len
        self.tie_embeddings = tie_embeddings
        self.input_dim, self.output_dim = input_dim, output_dim
        if tie_embeddings and (input_dim or output_dim):
            raise ValueError("tie_embeddings needs token inputs and outputs (this task is continuous)")
        if channel_mixer not in CHANNEL_MIXERS:
            raise ValueError(f"model.channel_mixer must be one of {', '.join(CHANNEL_MIXERS)}, got {channel_mixer!r}")
        if stack is not None and len(stack) != n_layers:
            raise ValueError(f"model.stack has {len(stack)} layers but model.n_layers is {n_layers}")
        # (mixer, options) of every layer
        self.layers = ([(str(layer["name"]), {k: v for k, v in layer.items() if k != "name"}) for layer in stack]
                       if stack is not None else [(mixer, dict(mixer_options or {}))] * n_layers)
        self.channel_mixer = channel_mixer
        # read-in: a lookup for tokens, a linear map for vectors (Garg et al.'s read_in)
        self.embed = nn.Linear(input_dim, d_model) if input_dim else nn.Embedding(vocab_size, d_model)
        self.position_embed = nn.Embedding(max_len, d_model) if position == "learned" else None  # GPT-2's wpe
        self.blocks = nn.ModuleList(
            Block(d_model, mixers.build(name, d_model, max_len, **with_train_len(name, options, train_len, max_len)),
                  mlp_ratio, norm, mlp_hidden, short_conv, order, mlp_activation, channel_mixer, swiglu_multiple_of)
            for name, options in self.layers
        )
        self.readout = readout
        self.decoder = LastStateDecoder(d_model, max_len, norm) if readout == "last" else None
        self.norm = make_norm(norm, d_model) if final_norm else nn.Identity()
        # read-out: the LM head for tokens, a linear map with bias for values (Garg et al.'s read_out)
        self.head = nn.Linear(d_model, output_dim) if output_dim else nn.Linear(d_model, vocab_size, bias=False)
        self._init_backbone()
        if init != "reference":
            initialise(self, init)
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
        for block in self.blocks:  # the channel mixer's input layers, then its output (into the residual stream)
            if block.mlp is not None:
                for layer in (block.mlp.fc,) if block.mlp.kind == "mlp" else (block.mlp.gate, block.mlp.up):
                    nn.init.normal_(layer.weight, std=0.02)
                nn.init.normal_(block.mlp.proj.weight, std=0.02 / math.sqrt(2 * self.n_layers))
                for layer in (block.mlp.fc, block.mlp.proj) if block.mlp.kind == "mlp" else ():
                    nn.init.zeros_(layer.bias)
        if self.decoder is not None:  # mad-lab's AutoEncoder._init_weights
            for layer in self.decoder.layers:
                if isinstance(layer, nn.Linear):
                    nn.init.normal_(layer.weight, std=0.02)
                    nn.init.zeros_(layer.bias)
        for block in self.blocks:  # Zoology's init of its BaseConv (zoology/model.py, _init_weights)
            if block.short_conv is not None:
                nn.init.normal_(block.short_conv.projection.weight, std=0.02)
                nn.init.zeros_(block.short_conv.projection.bias)

    def per_offset_kernels(self) -> set[str]:
        """The backbone's parameters that hold one weight per sequence offset (the short convolutions'
        filters): trained without weight decay, as the mixers' own (``harness.run.train.weight_decay_exempt``)."""
        return {f"blocks.{i}.short_conv.conv.weight" for i, b in enumerate(self.blocks) if b.short_conv is not None}

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens (batch, n)`` (or ``(batch, n, input_dim)``) -> ``logits (batch, n, vocab)`` (or
        ``(batch, n, output_dim)``)."""
        return self.head(self.features(tokens))

    def features(self, tokens: torch.Tensor) -> torch.Tensor:
        """What the head reads: ``tokens (batch, n)`` -> the final-normed states ``(batch, n, d_model)``;
        ``forward`` is ``head(features(tokens))``."""
        if tokens.shape[1] > self.max_len:
            raise ValueError(f"input of {tokens.shape[1]} tokens exceeds model.max_len={self.max_len}")
        x = self.read_in(tokens, 0)
        for block in self.blocks:
            x = block(x)
        if self.decoder is not None:
            x = self.decoder(x)
        return self.norm(x)

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
        self._check_decodable()
        x, states = self.read_in(tokens, 0), []
        for block in self.blocks:
            x, state = block.prefill(x)
            states.append(state)
        return self.head(self.norm(x)), states

    def decode(self, token: torch.Tensor, states: list[dict], position: int | None = None) -> tuple[torch.Tensor, list[dict]]:
        """One step: ``token (batch,)`` -> next-token logits ``(batch, vocab)`` and updated states.
        ``position`` (the token's index in the sequence) is needed with a learned position embedding."""
        self._check_decodable()
        if self.position_embed is not None and position is None:
            raise ValueError("decode: a model with a learned position embedding needs the token's position")
        x, new = self.read_in(token[:, None], position or 0)[:, 0], []
        for block, state in zip(self.blocks, states):
            x, state = block.step(x, state)
            new.append(state)
        return self.head(self.norm(x)), new

    def _check_decodable(self) -> None:
        if self.decoder is not None:
            raise ValueError("a model with readout 'last' decodes every output from the whole input: no token-by-token decoding")

    def state_bits(self, length: int, bits_per_value: int = 32) -> float:
        """Bits of decoding state after ``length`` tokens, all layers (``Mixer.state_size`` values of
        ``bits_per_value`` bits): beside ``tasks.copy.string_bits`` it says when copying must fail."""
        convs = sum(b.short_conv.state_size(length) for b in self.blocks if b.short_conv is not None)
        return float((sum(m.state_size(length) for m in self.mixer_modules) + convs) * bits_per_value)

    @property
    def mixer_modules(self) -> list[nn.Module]:
        return [block.mixer for block in self.blocks]

    @property
    def mixer_name(self) -> str:
        """The mixers by name: ``gla×2+attention`` for a hybrid stack (``harness.run.stack.display_name``);
        the mixer's own name where every layer is the same (a plain model, as ``harness.run.stack.label``)."""
        layers = [{"name": name, **options} for name, options in self.layers]
        return str(layers[0]["name"]) if all(layer == layers[0] for layer in layers) else display_name(layers)

    @property
    def backend(self) -> str:
        """The mixers' backend; a stack of several: ``<mixer>: <backend>`` for each, joined by ``; ``."""
        pairs = list(dict.fromkeys((name, block.mixer.backend) for (name, _), block in zip(self.layers, self.blocks)))
        if len({backend for _, backend in pairs}) == 1 and len({name for name, _ in pairs}) == 1:
            return pairs[0][1]
        return "; ".join(f"{name}: {backend}" for name, backend in pairs)

    def layer_summary(self, length: int) -> list[dict]:
        """Per layer: its mixer, backend, mixer parameters, mixer FLOPs and decoding-state values
        (None where the mixer does not say) for one sequence of ``length`` tokens."""
        out = []
        for (name, _), block in zip(self.layers, self.blocks):
            try:
                state = block.mixer.state_size(length)
            except NotImplementedError:
                state = None
            out.append({"mixer": name, "backend": block.mixer.backend, "flops": block.mixer.flops(length),
                        "params": sum(p.numel() for p in block.mixer.parameters()), "state": state})
        return out

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
        adds two norms, its mixer, the MLP and two residual adds (one norm and one add fewer without
        an MLP); then the final norm (when there is one) and the head (LM head or linear read-out).
        With short convolutions, ``short_conv`` counts them with their norms and residual adds.
        """
        n, d, L = length, self.d_model, self.n_layers
        mlp = self.blocks[0].mlp  # every block's channel mixer is the same
        sublayers = 2 if mlp is not None else 1
        final = 0 if isinstance(self.norm, nn.Identity) else 1
        mixer_flops = sum(m.flops(n) for m in self.mixer_modules)
        convs = {"short_conv": sum(b.short_conv.flops(n) + F.layer_norm(n, d) + n * d
                                   for b in self.blocks if b.short_conv is not None)} if self.short_conv else {}
        return {
            "embedding": (F.linear(n, self.input_dim, d) + n * d if self.input_dim else 0.0)
            + (n * d if self.position_embed is not None else 0.0),  # the position embedding's add
            "mixer": mixer_flops,
            "mlp": L * mlp.flops(n) if mlp is not None else 0.0,  # the channel mixer (MLP.flops, SwiGLU.flops)
            "norm_residual": (sublayers * L + final) * F.layer_norm(n, d) + sublayers * L * n * d,
            **convs,
            **({"readout": self.decoder.flops(n)} if self.decoder is not None else {}),
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


def with_train_len(mixer: str, options: dict, train_len: int | None, max_len: int) -> dict:
    """``options`` of a mixer set up for the training length (a ``train_len`` option left null: TMM's
    kernel scale, TNN's decay) with the longest training input; without it, its own fallback (max_len)."""
    if train_len and "train_len" in mixers.options_of(mixer) and options.get("train_len") is None:
        return {**options, "train_len": min(train_len, max_len)}
    return dict(options)


def initialise(model: SequenceModel, policy: str) -> None:
    """Re-initialise every linear layer and embedding of ``model`` (the mixers' included) by one policy,
    after the reference initialisation; other parameters (convolution filters, Toeplitz vectors,
    state-space parameters) keep their mixer's own. A bias or weight marked ``_no_reinit`` (as
    mamba_ssm marks ``dt_proj.bias``) is left alone, as Zoology's ``_init_weights`` does.

    - ``normal_002``: Zoology's and fla's: weights normal(0, 0.02), biases 0, embeddings normal(0,
      0.02); linear layers writing into the residual stream (``RESIDUAL_OUTPUTS``: ``out_proj``,
      ``o_proj``, the MLP's ``proj``) at std 0.02 / sqrt(2 n_layers) (zoology/model.py, _init_weights);
    - ``kaiming``: the TMM authors' (ToeplitzMixers, experiments/004-toeplitz-training/
      toep_mixer_test.py, ``MLPMixer._init_weights``): ``kaiming_normal_`` (fan in, gain sqrt 2) for
      every linear weight, the LM head's included, biases 0, the token embedding left at
      ``nn.Embedding``'s N(0, 1).
    """
    if policy not in INITS[1:]:
        raise ValueError(f"model.init must be one of {', '.join(INITS)}, got {policy!r}")
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear):
                if not getattr(module.weight, "_no_reinit", False):
                    if policy == "kaiming":
                        nn.init.kaiming_normal_(module.weight)
                    else:
                        residual = name.endswith(RESIDUAL_OUTPUTS)
                        nn.init.normal_(module.weight, std=0.02 / math.sqrt(2 * model.n_layers) if residual else 0.02)
                if module.bias is not None and not getattr(module.bias, "_no_reinit", False):
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=1.0 if policy == "kaiming" else 0.02)
