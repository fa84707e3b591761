"""Mamba (Gu & Dao 2023) and Mamba2 (Dao & Gu 2024, SSD) selective state-space mixers.

Backends (``impl``), all with identical hyperparameters (mamba_ssm's defaults) and initialisation:

- ``kernels``: mamba_ssm's ``Mamba2`` / ``Mamba`` with their fused CUDA and Triton kernels.
- ``torch``: mamba_ssm's layers (non-fused paths) in plain PyTorch: ``Mamba2Torch`` with the
  chunked SSD scan of ``mixers/ops/ssd.py``, ``Mamba1Torch`` with the chunked selective scan of
  ``mixers/ops/selective_scan.py``. Their parameter names equal mamba_ssm's and transformers', so
  state dicts move between all three (tests compare them with transformers' mixers).
- ``transformers``: transformers' ``Mamba2Mixer`` / ``MambaMixer`` through their pure-PyTorch
  reference paths (slow on CPU: Mamba2's materialises a (batch, chunks, len, len, heads, state)
  tensor, Mamba's scans one token at a time).

``auto`` takes ``kernels`` where mamba_ssm imports and CUDA is present, else ``torch``. Whatever is
installed, the path follows the device: mamba_ssm's module runs its kernels on CUDA inputs only and
the PyTorch path (``torch``'s maths over the same parameters) on CPU inputs, so a run configured for
``device: cpu`` on a GPU machine never calls a CUDA kernel. ``kernels`` starts from the initial
weights ``torch`` draws (copied in: the same names), so a seed gives the same model on every machine.
``backend`` (from the parameters' device) and ``backend_on(device)`` say which path runs.
The registry also offers ``mamba1`` and ``mamba2`` (``mixers/mamba1.py``, ``mixers/mamba2.py``):
this class with the version fixed and each version's own defaults.
"""
from __future__ import annotations

import importlib.util
import logging
import math

import torch
from torch import nn

from mixers import register
from mixers.base import Mixer
from mixers.ops import flops as F
from mixers.ops.selective_scan import selective_scan_chunked, selective_scan_steps
from mixers.ops.ssd import ssd_chunked

log = logging.getLogger(__name__)


def kernels_available() -> bool:
    """True when mamba_ssm imports and a CUDA device is present."""
    if not torch.cuda.is_available() or importlib.util.find_spec("mamba_ssm") is None:
        return False
    try:
        import mamba_ssm  # noqa: F401
    except Exception as err:  # a broken build must not take the CPU path down with it
        log.warning("mamba_ssm is installed but does not import (%s); using the PyTorch path", err)
        return False
    return True


def causal_conv1d_available() -> bool:
    return importlib.util.find_spec("causal_conv1d") is not None


def transformers_mamba_uses_kernels() -> bool:
    """transformers (5.x) binds its MambaMixer's and Mamba2Mixer's convolution and scan to
    causal_conv1d / mamba_ssm whenever those packages import, whatever the device, so its reference
    path is then unreachable and CPU inputs fail inside causal_conv1d (seen on the GPU machine)."""
    return causal_conv1d_available() or importlib.util.find_spec("mamba_ssm") is not None


def _quiet_transformers() -> None:
    """transformers logs a 'falling back to its reference implementation' line per call site."""
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
    except ImportError:
        pass


def init_dt_bias(heads: int, dt_min: float, dt_max: float, floor: float = 1e-4) -> torch.Tensor:
    """mamba_ssm's initialisation: softplus(dt_bias) log-uniform in [dt_min, dt_max]."""
    dt = torch.exp(torch.rand(heads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=floor)
    return dt + torch.log(-torch.expm1(-dt))  # inverse softplus


class GatedRMSNorm(nn.Module):
    """``rmsnorm(y * silu(z)) * weight`` within groups of ``group_size`` channels (norm after gate)."""

    def __init__(self, d: int, group_size: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.group_size, self.eps = group_size, eps

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return gated_rms_norm(y, z, self)


def gated_rms_norm(y: torch.Tensor, z: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    """``GatedRMSNorm`` with the parameters of ``norm`` (``weight``, ``group_size``, ``eps``: this
    module's, or mamba_ssm's ``RMSNormGated`` with ``norm_before_gate=False``): ``(..., d) -> (..., d)``."""
    y = y * nn.functional.silu(z)
    g = y.unflatten(-1, (-1, norm.group_size))
    g = g.float() if g.dtype in (torch.float16, torch.bfloat16) else g
    g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + norm.eps)
    return g.flatten(-2).to(y.dtype) * norm.weight


class Mamba2Torch(nn.Module):
    """mamba_ssm's Mamba2 layer (non-fused path) in PyTorch: ``(batch, n, d) -> (batch, n, d)``."""

    def __init__(self, d_model: int, d_state: int, d_conv: int, expand: int, headdim: int, ngroups: int,
                 chunk_size: int, dt_min: float, dt_max: float, a_init_min: float, a_init_max: float):
        super().__init__()
        self.d_inner = expand * d_model
        self.nheads, self.headdim, self.ngroups, self.d_state = self.d_inner // headdim, headdim, ngroups, d_state
        self.chunk_size = chunk_size
        conv_dim = self.d_inner + 2 * ngroups * d_state
        self.in_proj = nn.Linear(d_model, self.d_inner + conv_dim + self.nheads, bias=False)  # z, xBC, dt
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, d_conv, groups=conv_dim, padding=d_conv - 1, bias=True)
        self.dt_bias = nn.Parameter(init_dt_bias(self.nheads, dt_min, dt_max))
        self.A_log = nn.Parameter(torch.empty(self.nheads).uniform_(a_init_min, a_init_max).log())
        self.D = nn.Parameter(torch.ones(self.nheads))
        for p in (self.dt_bias, self.A_log, self.D):  # as mamba_ssm's Mamba2 marks them
            p._no_weight_decay = True
        self.norm = GatedRMSNorm(self.d_inner, self.d_inner // ngroups)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.prefill(u)[0]

    def prefill(self, u: torch.Tensor) -> tuple[torch.Tensor, dict]:
        return mamba2_prefill(self, u)

    def step(self, u: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        return mamba2_step(self, u, state)


# The PyTorch Mamba2 maths over any layer with mamba_ssm's Mamba2 attributes (``in_proj``, ``conv1d``,
# ``dt_bias``, ``A_log``, ``D``, ``norm``, ``out_proj``, ``d_inner``, ``nheads``, ``headdim``, ``ngroups``,
# ``d_state``, ``chunk_size``): ``Mamba2Torch``, or mamba_ssm's own ``Mamba2`` given CPU inputs.
def _mamba2_scan_inputs(layer: nn.Module, xbc: torch.Tensor, dt: torch.Tensor, ct: torch.dtype):
    """Split the convolved ``xbc (..., conv_dim)``: x ``(..., heads, p)``, B and C ``(..., groups, n)``,
    softplus(dt + bias) and A, all in ``ct``."""
    x, B, C = xbc.split([layer.d_inner, layer.ngroups * layer.d_state, layer.ngroups * layer.d_state], dim=-1)
    x = x.unflatten(-1, (layer.nheads, layer.headdim)).to(ct)
    B = B.unflatten(-1, (layer.ngroups, layer.d_state)).to(ct)
    C = C.unflatten(-1, (layer.ngroups, layer.d_state)).to(ct)
    dt = nn.functional.softplus(dt.to(ct) + layer.dt_bias.to(ct))
    return x, B, C, dt, -torch.exp(layer.A_log.to(ct))


def mamba2_prefill(layer: nn.Module, u: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """``u (batch, n, d_model)`` -> the output and the decoding state ``{"conv", "ssm"}``."""
    n = u.shape[1]
    z, xbc, dt = layer.in_proj(u).split([layer.d_inner, layer.conv1d.in_channels, layer.nheads], dim=-1)
    k = layer.conv1d.kernel_size[0]
    conv_state = nn.functional.pad(xbc.transpose(1, 2), (k - 1, 0))[..., n:]  # last k-1 inputs
    xbc = nn.functional.silu(layer.conv1d(xbc.transpose(1, 2))[..., :n].transpose(1, 2))
    ct = torch.float32 if u.dtype in (torch.float16, torch.bfloat16) else u.dtype  # scan precision
    x, B, C, dt, A = _mamba2_scan_inputs(layer, xbc, dt, ct)  # x (b, n, h, p), B and C (b, n, g, N), dt (b, n, h)
    y, ssm_state = ssd_chunked(x, dt, A, B, C, min(layer.chunk_size, n), return_state=True)
    y = y + x * layer.D.to(ct)[:, None]
    y = gated_rms_norm(y.flatten(-2).to(u.dtype), z, layer.norm)
    return layer.out_proj(y), {"conv": conv_state, "ssm": ssm_state}


def mamba2_step(layer: nn.Module, u: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
    """One token ``u (batch, d_model)``: the recurrence of ``ssd_sequential`` for one step."""
    z, xbc, dt = layer.in_proj(u).split([layer.d_inner, layer.conv1d.in_channels, layer.nheads], dim=-1)
    window = torch.cat([state["conv"], xbc[..., None]], dim=-1)  # (b, conv_dim, k)
    xbc = nn.functional.silu((window * layer.conv1d.weight[:, 0]).sum(-1) + layer.conv1d.bias)
    ct = state["ssm"].dtype
    x, B, C, dt, A = _mamba2_scan_inputs(layer, xbc, dt, ct)  # x (b, h, p), B and C (b, g, N), dt (b, h)
    r = layer.nheads // layer.ngroups
    B, C = B.repeat_interleave(r, dim=1), C.repeat_interleave(r, dim=1)  # (b, h, N)
    ssm = state["ssm"] * torch.exp(dt * A)[..., None, None] + (dt[..., None] * x)[..., None] * B[:, :, None, :]
    y = (ssm * C[:, :, None, :]).sum(-1) + x * layer.D.to(ct)[:, None]
    y = gated_rms_norm(y.flatten(-2).to(u.dtype), z, layer.norm)
    return layer.out_proj(y), {"conv": window[..., 1:], "ssm": ssm}


class Mamba1Torch(nn.Module):
    """mamba_ssm's Mamba layer (non-fused path) in PyTorch: ``(batch, n, d) -> (batch, n, d)``.

    ``in_proj`` to x and z, causal depthwise ``conv1d`` and SiLU on x, ``x_proj`` to (dt, B, C),
    ``dt_proj`` (low rank ``dt_rank``) and softplus, the selective scan, ``D`` skip, ``y * silu(z)``,
    ``out_proj``. Initialisation as mamba_ssm: S4D-real ``A_log = log(1..N)``, ``D = 1``, dt_proj
    weight uniform in +-dt_rank^-1/2 and bias the inverse softplus of a log-uniform dt. The scan
    runs in chunks of ``chunk_size`` positions (``mixers/ops/selective_scan.py``).
    """

    def __init__(self, d_model: int, d_state: int, d_conv: int, expand: int, dt_rank: int, dt_min: float,
                 dt_max: float, chunk_size: int):
        super().__init__()
        self.d_inner, self.d_state, self.dt_rank, self.chunk_size = expand * d_model, d_state, dt_rank, chunk_size
        di = self.d_inner
        self.in_proj = nn.Linear(d_model, 2 * di, bias=False)  # x, z
        self.conv1d = nn.Conv1d(di, di, d_conv, groups=di, padding=d_conv - 1, bias=True)
        self.x_proj = nn.Linear(di, dt_rank + 2 * d_state, bias=False)  # dt (low rank), B, C
        self.dt_proj = nn.Linear(dt_rank, di, bias=True)
        with torch.no_grad():
            nn.init.uniform_(self.dt_proj.weight, -dt_rank ** -0.5, dt_rank ** -0.5)
            self.dt_proj.bias.copy_(init_dt_bias(di, dt_min, dt_max))
        self.dt_proj.bias._no_reinit = True  # as mamba_ssm: a shared init policy leaves it (harness.run.model.initialise)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(di, 1))
        self.D = nn.Parameter(torch.ones(di))
        for p in (self.A_log, self.D):  # as mamba_ssm's Mamba marks them
            p._no_weight_decay = True
        self.out_proj = nn.Linear(di, d_model, bias=False)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.prefill(u)[0]

    def prefill(self, u: torch.Tensor) -> tuple[torch.Tensor, dict]:
        return mamba1_prefill(self, u, self.chunk_size)

    def step(self, u: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        return mamba1_step(self, u, state)


# The PyTorch Mamba maths over any layer with mamba_ssm's Mamba attributes (``in_proj``, ``conv1d``,
# ``x_proj``, ``dt_proj``, ``A_log``, ``D``, ``out_proj``, ``d_inner``, ``d_state``, ``dt_rank``):
# ``Mamba1Torch``, or mamba_ssm's own ``Mamba`` given CPU inputs.
def _mamba1_scan_inputs(layer: nn.Module, x: torch.Tensor, ct: torch.dtype):
    """From the convolved ``x (..., d_inner)``: dt after softplus, B and C ``(..., N)``, A, in ``ct``."""
    dt, B, C = layer.x_proj(x).split([layer.dt_rank, layer.d_state, layer.d_state], dim=-1)
    dt = nn.functional.softplus(layer.dt_proj(dt).to(ct))
    return dt, B.to(ct), C.to(ct), -torch.exp(layer.A_log.to(ct))


def mamba1_prefill(layer: nn.Module, u: torch.Tensor, chunk_size: int) -> tuple[torch.Tensor, dict]:
    """``u (batch, n, d_model)`` -> the output and the decoding state, the scan in chunks of ``chunk_size``."""
    n = u.shape[1]
    x, z = layer.in_proj(u).chunk(2, dim=-1)  # (b, n, d_inner) each
    k = layer.conv1d.kernel_size[0]
    conv_state = nn.functional.pad(x.transpose(1, 2), (k - 1, 0))[..., n:]  # last k-1 inputs
    x = nn.functional.silu(layer.conv1d(x.transpose(1, 2))[..., :n].transpose(1, 2))
    ct = torch.float32 if u.dtype in (torch.float16, torch.bfloat16) else u.dtype  # scan precision
    dt, B, C, A = _mamba1_scan_inputs(layer, x, ct)
    y, ssm_state = selective_scan_chunked(x.to(ct), dt, A, B, C, min(chunk_size, n))
    y = (y + x.to(ct) * layer.D.to(ct)).to(u.dtype) * nn.functional.silu(z)
    return layer.out_proj(y), {"conv": conv_state, "ssm": ssm_state}


def mamba1_step(layer: nn.Module, u: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
    """One token ``u (batch, d_model)``: the recurrence of ``selective_scan_sequential`` for one step."""
    x, z = layer.in_proj(u).chunk(2, dim=-1)
    window = torch.cat([state["conv"], x[..., None]], dim=-1)  # (b, d_inner, k)
    x = nn.functional.silu((window * layer.conv1d.weight[:, 0]).sum(-1) + layer.conv1d.bias)
    ct = state["ssm"].dtype
    dt, B, C, A = _mamba1_scan_inputs(layer, x, ct)  # dt (b, d_inner), B and C (b, N)
    ssm = torch.exp(dt[..., None] * A) * state["ssm"] + (dt * x.to(ct))[..., None] * B[:, None, :]
    y = (ssm * C[:, None, :]).sum(-1) + x.to(ct) * layer.D.to(ct)
    return layer.out_proj(y.to(u.dtype) * nn.functional.silu(z)), {"conv": window[..., 1:], "ssm": ssm}


@register("mamba")
class MambaMixer(Mixer):
    """Mamba2 (``version=2``, default) or Mamba (``version=1``): ``(batch, n, d_model) -> same``."""

    time_complexity = "O(n)"
    memory_complexity = "O(n)"
    time_exponent = 1.0
    memory_exponent = 1.0
    state_complexity = "O(1)"
    state_exponent = 0.0
    paper = ("Gu & Dao 2023, Mamba (arXiv 2312.00752); Dao & Gu 2024, Transformers are SSMs (Mamba2, "
             "arXiv 2405.21060)")
    backends = ("mamba_ssm-cuda", "torch-chunked", "transformers-torch-reference")

    def __init__(self, d_model: int, max_len: int, version: int = 2, d_state: int = 128, d_conv: int = 4,
                 expand: int = 2, headdim: int = 64, ngroups: int = 1, chunk_size: int = 256,
                 dt_min: float = 0.001, dt_max: float = 0.1, a_init_min: float = 1.0, a_init_max: float = 16.0,
                 impl: str = "auto"):
        super().__init__(d_model, max_len)
        if version not in (1, 2):
            raise ValueError(f"mamba: version must be 1 or 2, got {version}")
        if impl not in ("auto", "kernels", "torch", "transformers"):
            raise ValueError(f"mamba: impl must be auto, kernels, torch or transformers, got {impl!r}")
        d_inner = expand * d_model
        if version == 2 and d_inner % headdim:
            raise ValueError(f"mamba: expand * d_model = {d_inner} is not divisible by headdim={headdim}")
        self.version, self.d_state, self.d_conv, self.expand = version, d_state, d_conv, expand
        self.d_inner, self.headdim, self.ngroups, self.chunk_size = d_inner, headdim, ngroups, chunk_size
        self.dt_rank = math.ceil(d_model / 16)
        if impl == "auto":
            impl = "kernels" if kernels_available() else "torch"
        self._torch_backend = "torch-selective-scan-chunked" if version == 1 else "torch-ssd-chunked"
        if impl in ("torch", "kernels"):
            if version == 1:
                self.inner = Mamba1Torch(d_model, d_state, d_conv, expand, self.dt_rank, dt_min, dt_max, chunk_size)
            else:
                self.inner = Mamba2Torch(d_model, d_state, d_conv, expand, headdim, ngroups, chunk_size, dt_min,
                                         dt_max, a_init_min, a_init_max)
            self._backend = self._torch_backend
        if impl == "kernels":  # mamba_ssm's module, holding the torch module's initial weights (same names)
            reference, rng = self.inner, torch.random.get_rng_state()
            self.inner, self._backend = self._build_mamba_ssm(dt_min, dt_max, a_init_min, a_init_max)
            torch.random.set_rng_state(rng)  # whichever backend, later layers draw the same initial weights
            self.inner.load_state_dict(reference.state_dict())
            for name, p in self.inner.named_parameters():  # its marks, and ours (the same parameters)
                if getattr(reference.get_parameter(name), "_no_weight_decay", False):
                    p._no_weight_decay = True
        elif impl == "transformers":
            self.inner, self._backend = self._build_transformers(dt_min, dt_max, a_init_min, a_init_max)

    def _build_mamba_ssm(self, dt_min, dt_max, a_min, a_max) -> tuple[nn.Module, str]:
        from mamba_ssm import Mamba, Mamba2

        if self.version == 1:
            module = Mamba(self.d_model, d_state=self.d_state, d_conv=self.d_conv, expand=self.expand,
                           dt_min=dt_min, dt_max=dt_max, layer_idx=0)
            return module, "mamba_ssm-cuda-selective-scan"
        fused = causal_conv1d_available()
        module = Mamba2(self.d_model, d_state=self.d_state, d_conv=self.d_conv, expand=self.expand,
                        headdim=self.headdim, ngroups=self.ngroups, chunk_size=self.chunk_size,
                        dt_min=dt_min, dt_max=dt_max, A_init_range=(a_min, a_max), use_mem_eff_path=fused,
                        layer_idx=0)  # a layer index keys its decoding state in mamba_ssm's InferenceParams
        return module, "mamba_ssm-triton-ssd" + ("-fused-causal_conv1d" if fused else "-unfused")

    def _build_transformers(self, dt_min, dt_max, a_min, a_max) -> tuple[nn.Module, str]:
        _quiet_transformers()
        if self.version == 1:
            from transformers import MambaConfig
            from transformers.models.mamba.modeling_mamba import MambaMixer as HFMamba

            cfg = MambaConfig(hidden_size=self.d_model, state_size=self.d_state, conv_kernel=self.d_conv,
                              expand=self.expand, time_step_rank=self.dt_rank, time_step_min=dt_min,
                              time_step_max=dt_max, use_bias=False, use_conv_bias=True, num_hidden_layers=1)
            return HFMamba(cfg, layer_idx=0), self._transformers_backend()
        from transformers import Mamba2Config
        from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer as HFMamba2

        cfg = Mamba2Config(hidden_size=self.d_model, state_size=self.d_state, conv_kernel=self.d_conv,
                           expand=self.expand, head_dim=self.headdim, num_heads=self.d_inner // self.headdim,
                           n_groups=self.ngroups, chunk_size=self.chunk_size, time_step_min=dt_min,
                           time_step_max=dt_max, use_bias=False, use_conv_bias=True, num_hidden_layers=1)
        module = HFMamba2(cfg, layer_idx=0)
        with torch.no_grad():  # mamba_ssm's A initialisation (transformers uses A = 1..heads)
            module.A_log.copy_(torch.empty_like(module.A_log).uniform_(a_min, a_max).log())
        return module, self._transformers_backend()

    @staticmethod
    def _transformers_backend() -> str:
        return "transformers-" + ("compiled-kernels" if transformers_mamba_uses_kernels() else "torch-reference")

    @property
    def backend(self) -> str:
        """mamba_ssm's kernels while the parameters are on a CUDA device, the PyTorch path otherwise
        (the path follows the device, whatever is installed)."""
        return self.backend_on(self.inner.in_proj.weight.device)

    def backend_on(self, device: torch.device) -> str:
        """The path that runs for inputs on ``device``."""
        if self._backend.startswith("mamba_ssm") and torch.device(device).type != "cuda":
            return self._torch_backend
        return self._backend

    def _kernels(self, x: torch.Tensor) -> bool:
        """Whether mamba_ssm's kernels run for ``x``: mamba_ssm's module and a CUDA input."""
        return self._backend.startswith("mamba_ssm") and x.is_cuda

    def _torch_prefill(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """The PyTorch path over ``self.inner``'s parameters (ours, or mamba_ssm's module's)."""
        if self.version == 1:
            return mamba1_prefill(self.inner, x, self.chunk_size)
        return mamba2_prefill(self.inner, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (batch, n, d_model)`` -> ``(batch, n, d_model)``."""
        if self._backend == "transformers-compiled-kernels" and not x.is_cuda:
            raise RuntimeError(f"mamba: backend {self._backend} runs mamba_ssm / causal_conv1d kernels, which need "
                               "CUDA inputs; use impl=torch on CPU")
        if self._backend.startswith("transformers") or self._kernels(x):
            return self.inner(x)
        return self._torch_prefill(x)[0]

    @property
    def supports_decode(self) -> bool:
        return not self._backend.startswith("transformers")

    def prefill(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        if self._kernels(x):
            from mamba_ssm.utils.generation import InferenceParams

            width = self.inner.in_proj.out_features
            if self.version == 2 and width % 8:
                raise ValueError(f"mamba: mamba_ssm's decode prefill (causal_conv1d, channel-last) needs the "
                                 f"in-projection width {width} to be a multiple of 8; change d_model, expand or headdim")
            params = InferenceParams(max_seqlen=self.max_len, max_batch_size=x.shape[0])
            y = self.inner(x, inference_params=params)
            conv, ssm = params.key_value_memory_dict[self.inner.layer_idx]
            return y, {"conv": conv, "ssm": ssm}
        if not self._backend.startswith("transformers"):
            return self._torch_prefill(x)
        raise NotImplementedError("mamba: the transformers backend has no decode path here; use impl=torch or kernels")

    def step(self, x: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        if self._kernels(x):  # updates the states in place
            y, conv, ssm = self.inner.step(x[:, None], state["conv"], state["ssm"])
            return y[:, 0], {"conv": conv, "ssm": ssm}
        if not self._backend.startswith("transformers"):
            return (mamba1_step if self.version == 1 else mamba2_step)(self.inner, x, state)
        raise NotImplementedError("mamba: the transformers backend has no decode path here; use impl=torch or kernels")

    def state_size(self, length: int) -> int:
        """A fixed recurrent state: the SSM state and the convolution's last d_conv - 1 inputs."""
        if self.version == 1:
            return self.d_inner * self.d_state + (self.d_conv - 1) * self.d_inner
        conv_dim = self.d_inner + 2 * self.ngroups * self.d_state
        return self.d_inner * self.d_state + (self.d_conv - 1) * conv_dim

    def flop_terms(self, length: int) -> dict[str, float]:
        n, d, di, N = length, self.d_model, self.d_inner, self.d_state
        if self.version == 1:
            R = self.dt_rank
            # y = C h, a product per step; per token, channel and state: exp(dt A), dt B x, h = a h + b
            outputs, scan = 2.0 * n * di * N, 7.0 * n * di * N
            if self.backend.startswith("torch"):  # the chunked scan, over the length padded to whole chunks
                Q, chunks = selective_scan_steps(n, min(self.chunk_size, n))
                L = Q * chunks
                outputs, scan = 2.0 * L * di * N, 5.0 * L * di * N
                if chunks > 1:  # the entering states: their decay to each step, and their outputs
                    outputs, scan = outputs + 2.0 * L * di * N, scan + 3.0 * L * di * N + 4.0 * chunks * di * N
            return {
                "matmul": F.linear(n, d, 2 * di) + F.causal_depthwise_conv(n, di, self.d_conv)
                + F.linear(n, di, R + 2 * N) + F.linear(n, R, di) + F.linear(n, di, d) + outputs,
                "scan": scan,
                "elementwise": 14.0 * n * di,  # dt bias and softplus, SiLU of x and z, D skip, gate
            }
        H, P, G = di // self.headdim, self.headdim, self.ngroups
        Q = min(self.chunk_size, n)
        chunks = math.ceil(n / Q)
        conv_dim = di + 2 * G * N
        ssd_products = chunks * (
            2.0 * Q * Q * N * G  # C B^T within a chunk, per group
            + 2.0 * Q * Q * P * H  # decayed scores times x, per head
            + 2.0 * Q * N * P * H  # chunk states B^T x
            + 2.0 * Q * N * P * H  # inter-chunk output C . state
        )
        return {
            "matmul": F.linear(n, d, 2 * di + 2 * G * N + H) + F.causal_depthwise_conv(n, conv_dim, self.d_conv)
            + F.linear(n, di, d) + ssd_products,
            "scan": 2.0 * chunks * N * P * H,  # states carried from chunk to chunk
            # decay masks exp(a_i - a_j), scores x mask, dt x, D skip, SiLU, softplus, gated RMSNorm
            "elementwise": chunks * 3.0 * Q * Q * H + 16.0 * n * di,
        }
