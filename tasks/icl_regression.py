"""In-context linear regression (Garg et al. 2022, "What can transformers learn in-context?").

Per sequence a fresh ``w ~ N(0, I_d)``; ``x_i ~ N(0, I_d)``, ``y_i = w . x_i + noise_std * eps_i``.
The prompt interleaves ``x_1, y_1, x_2, y_2, ..., x_n, y_n`` as ``2 n`` vectors of dimension ``d``,
each ``y`` written as ``(y, 0, ..., 0)`` (Garg et al.'s layout); the backbone reads them through a
linear read-in and predicts one value per position through a linear read-out. The prediction at
``x_i`` (having seen ``i - 1`` examples) is scored against ``y_i``; the loss is the mean squared
error over those ``n`` positions.

The metric is the squared error at each number of in-context examples ``k = 0..n-1``, divided by
``d`` (so the zero predictor scores ``E[y^2] / d = 1`` without noise), reported as ``err_k<k>``,
with the same curve for least squares (``lsq_k<k>``, minimum-norm for ``k < d``) and the zero
predictor (``zero_k<k>``) on the same prompts, and ``error`` the model's mean over ``k``.
"""
from __future__ import annotations

import torch

from tasks import register_task
from tasks.base import Batch, Task, require


def regression_prompts(w: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> Batch:
    """Interleave ``xs (batch, n, d)`` and ``ys (batch, n)`` into inputs ``(batch, 2n, d)``; targets and
    mask ``(batch, 2n)`` score ``y_i`` at the position of ``x_i``. ``w (batch, d)`` goes to ``extras``."""
    batch, n, d = xs.shape
    ys_wide = torch.zeros_like(xs)
    ys_wide[..., 0] = ys
    inputs = torch.stack([xs, ys_wide], dim=2).reshape(batch, 2 * n, d)
    targets = torch.zeros(batch, 2 * n, dtype=xs.dtype, device=xs.device)
    targets[:, 0::2] = ys
    mask = torch.zeros(batch, 2 * n, dtype=torch.bool, device=xs.device)
    mask[:, 0::2] = True
    return Batch(inputs=inputs, targets=targets, mask=mask, extras={"w": w})


def least_squares_predictions(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Prediction for every ``y_i`` from the examples before it: ``xs (batch, n, d)``, ``ys (batch, n)`` ->
    ``(batch, n)``. The minimum-norm least-squares solution (pseudo-inverse) when ``i < d``; 0 for ``i = 0``."""
    batch, n, d = xs.shape
    preds = torch.zeros(batch, n, dtype=xs.dtype, device=xs.device)
    for i in range(1, n):
        w_hat = torch.linalg.pinv(xs[:, :i].double()) @ ys[:, :i, None].double()  # (B, d, 1)
        preds[:, i] = (xs[:, i, None, :].double() @ w_hat)[:, 0, 0].to(xs.dtype)
    return preds


@register_task("icl_regression")
class ICLRegressionTask(Task):
    """Learn linear functions in context: squared error / d against the number of examples."""

    name = "icl_regression"
    input_kind = "continuous"
    output_kind = "continuous"

    def __init__(self, n_dims: int = 8, n_points: int = 17, noise_std: float = 0.0, eval_samples: int = 1280,
                 eval_seed: int = 1234):
        require(n_dims >= 1, "n_dims", f"must be >= 1, got {n_dims}")
        require(n_points >= 2, "n_points", f"must be >= 2 (at least one in-context example), got {n_points}")
        require(noise_std >= 0, "noise_std", f"must be >= 0, got {noise_std}")
        require(eval_samples >= 1, "eval_samples", f"must be >= 1, got {eval_samples}")
        self.n_dims, self.n_points, self.noise_std = n_dims, n_points, noise_std
        self.eval_samples, self.eval_seed = eval_samples, eval_seed
        self.input_dim, self.output_dim = n_dims, 1

    def max_input_len(self) -> int:
        return 2 * self.n_points

    def _sample(self, batch: int, generator: torch.Generator) -> Batch:
        device = generator.device
        w = torch.randn(batch, self.n_dims, generator=generator, device=device)
        xs = torch.randn(batch, self.n_points, self.n_dims, generator=generator, device=device)
        ys = (xs @ w[:, :, None])[..., 0]
        if self.noise_std > 0:
            ys = ys + self.noise_std * torch.randn(batch, self.n_points, generator=generator, device=device)
        return regression_prompts(w, xs, ys)

    def train_batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        return self._sample(batch_size, generator)

    def eval_sets(self) -> dict[str, Batch]:
        return {"prompts": self._sample(self.eval_samples, torch.Generator().manual_seed(self.eval_seed))}

    def loss(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Mean squared error over the scored positions; ``outputs (batch, 2n, 1)``."""
        err = (outputs[..., 0].float() - batch.targets) ** 2 * batch.mask
        return err.sum() / batch.mask.sum().clamp(min=1)

    def error_curve(self, predictions: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Squared error / d per example and number of in-context examples: ``(batch, n)``."""
        return (predictions - batch.targets[:, 0::2]) ** 2 / self.n_dims

    @torch.no_grad()
    def metrics(self, outputs: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
        xs, ys = batch.inputs[:, 0::2].float(), batch.targets[:, 0::2].float()
        curves = {"err": self.error_curve(outputs[:, 0::2, 0].float(), batch),
                  "lsq": self.error_curve(least_squares_predictions(xs, ys), batch),
                  "zero": self.error_curve(torch.zeros_like(ys), batch)}
        out = {"error": curves["err"].mean(1)}
        for name, curve in curves.items():
            out.update({f"{name}_k{k}": curve[:, k] for k in range(self.n_points)})
        return out

    def summary(self) -> dict:
        return {"n_dims": self.n_dims, "n_points": self.n_points, "noise_std": self.noise_std}
