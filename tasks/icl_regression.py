"""In-context linear regression (Garg et al. 2022, "What can transformers learn in-context?").

Per sequence a fresh ``w ~ N(0, I_d)``; ``x_i ~ N(0, I_d)``, ``y_i = w . x_i + noise_std * eps_i``.
The prompt interleaves ``x_1, y_1, x_2, y_2, ..., x_n, y_n`` as ``2 n`` vectors of dimension ``d``,
each ``y`` written as ``(y, 0, ..., 0)`` (Garg et al.'s layout); the backbone reads them through a
linear read-in and predicts one value per position through a linear read-out. The prediction at
``x_i`` (having seen ``i - 1`` examples) is scored against ``y_i``; the loss is the mean squared
error over those ``n`` positions.

The metric is the squared error at each number of in-context examples ``k = 0..n-1``, divided by
``d`` (so the zero predictor scores ``E[y^2] / d = 1`` without noise), reported as ``err_k<k>``,
with the same curve for the baselines on the same prompts, and ``error`` the model's mean over ``k``.
The baselines are Garg et al.'s: least squares (``lsq_k<k>``, minimum-norm for ``k < d``),
averaging (``avg_k<k>``: ``w = mean_i y_i x_i``), 3-nearest-neighbours (``knn_k<k>``: the mean
``y`` of the 3 examples nearest to the query, all of them when fewer), the zero predictor
(``zero_k<k>``), and one step of gradient descent from ``w = 0`` with the step size that minimises
the expected error under the task's prior (``gd_k<k>``: ``eta_k = 1 / (k + d + 1 + noise_std^2)``;
averaging is the same step with ``eta_k = 1 / k``).

Curriculum (``curriculum: true``, Garg et al.'s schedule in dtsip/in-context-learning): training
prompts start with ``curriculum_start_dims`` effective dimensions (the other coordinates of every
``x`` zeroed) and ``curriculum_start_points`` examples; every ``curriculum_interval`` steps the
dimension grows by 1 and the number of examples by 2, each up to ``n_dims`` / ``n_points``. The
evaluation prompts always have the full ``n_dims`` and ``n_points``. The training loop tells the
task its step through ``set_step``.
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


def averaging_predictions(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Garg et al.'s averaging baseline: ``x_i . mean_{j<i} y_j x_j`` for ``xs (batch, n, d)``, ``ys (batch, n)``
    -> ``(batch, n)``; 0 for ``i = 0``."""
    running = (ys[..., None] * xs).cumsum(1)  # (B, n, d): sum_{j<=i} y_j x_j
    previous = torch.cat([torch.zeros_like(running[:, :1]), running[:, :-1]], dim=1)  # sum over j < i
    counts = torch.arange(xs.shape[1], device=xs.device, dtype=xs.dtype).clamp(min=1)[None, :, None]
    return (xs * previous / counts).sum(-1)


def one_step_gd_predictions(xs: torch.Tensor, ys: torch.Tensor, noise_std: float = 0.0) -> torch.Tensor:
    """One gradient-descent step from ``w = 0`` on the ``k = i`` examples before ``y_i``, with the step size
    that minimises the expected squared error when ``w, x ~ N(0, I_d)`` and the noise has ``noise_std``:
    ``eta_k = 1 / (k + d + 1 + noise_std^2)`` (from ``E[(X^T X)^2] = k (k + d + 1) I``); without noise its
    expected error / d is ``(d + 1) / (k + d + 1)`` (averaging's, ``eta_k = 1 / k``, is ``(d + 1) / k``).
    ``xs (batch, n, d)``, ``ys (batch, n)`` -> ``(batch, n)``."""
    n, d = xs.shape[1:]
    running = (ys[..., None] * xs).cumsum(1)
    previous = torch.cat([torch.zeros_like(running[:, :1]), running[:, :-1]], dim=1)
    k = torch.arange(n, device=xs.device, dtype=xs.dtype)[None, :, None]
    return (xs * previous / (k + d + 1 + noise_std ** 2)).sum(-1)


def nearest_neighbour_predictions(xs: torch.Tensor, ys: torch.Tensor, neighbours: int = 3) -> torch.Tensor:
    """Garg et al.'s nearest-neighbour baseline: the mean ``y`` of the ``neighbours`` examples before ``x_i``
    nearest to it (Euclidean; all of them when fewer; ties to the earlier example), 0 for ``i = 0``.
    ``xs (batch, n, d)``, ``ys (batch, n)`` -> ``(batch, n)``."""
    batch, n, _ = xs.shape
    preds = torch.zeros(batch, n, dtype=xs.dtype, device=xs.device)
    for i in range(1, n):
        dist = (xs[:, :i] - xs[:, i, None]).square().sum(-1)  # (B, i)
        nearest = dist.argsort(dim=-1, stable=True)[:, :neighbours]
        preds[:, i] = ys[:, :i].gather(1, nearest).mean(1)
    return preds


def curriculum_stage(step: int, start: int, end: int, increment: int, interval: int) -> int:
    """Garg et al.'s schedule: ``start`` raised by ``increment`` every ``interval`` steps, at most ``end``."""
    return min(end, start + increment * (step // interval))


@register_task("icl_regression")
class ICLRegressionTask(Task):
    """Learn linear functions in context: squared error / d against the number of examples."""

    name = "icl_regression"
    training_options = ("curriculum", "curriculum_start_dims", "curriculum_start_points", "curriculum_interval")
    input_kind = "continuous"
    output_kind = "continuous"

    def __init__(self, n_dims: int = 8, n_points: int = 17, noise_std: float = 0.0, eval_samples: int = 1280,
                 eval_seed: int = 1234, curriculum: bool = False, curriculum_start_dims: int = 5,
                 curriculum_start_points: int = 11, curriculum_interval: int = 2000):
        require(n_dims >= 1, "n_dims", f"must be >= 1, got {n_dims}")
        require(n_points >= 2, "n_points", f"must be >= 2 (at least one in-context example), got {n_points}")
        require(noise_std >= 0, "noise_std", f"must be >= 0, got {noise_std}")
        require(eval_samples >= 1, "eval_samples", f"must be >= 1, got {eval_samples}")
        self.n_dims, self.n_points, self.noise_std = n_dims, n_points, noise_std
        self.eval_samples, self.eval_seed = eval_samples, eval_seed
        self.input_dim, self.output_dim = n_dims, 1
        if curriculum:
            require(1 <= curriculum_start_dims <= n_dims, "curriculum_start_dims",
                    f"must be in [1, n_dims={n_dims}], got {curriculum_start_dims}")
            require(2 <= curriculum_start_points <= n_points, "curriculum_start_points",
                    f"must be in [2, n_points={n_points}], got {curriculum_start_points}")
            require(curriculum_interval >= 1, "curriculum_interval", f"must be >= 1, got {curriculum_interval}")
        self.curriculum = curriculum
        self.curriculum_start = (curriculum_start_dims, curriculum_start_points)
        self.curriculum_interval = curriculum_interval
        self.step = 0

    def set_step(self, step: int) -> None:
        self.step = step

    def stage(self, step: int) -> tuple[int, int]:
        """Effective dimension and number of examples of the training prompts at ``step``."""
        if not self.curriculum:
            return self.n_dims, self.n_points
        dims, points = self.curriculum_start
        return (curriculum_stage(step, dims, self.n_dims, 1, self.curriculum_interval),
                curriculum_stage(step, points, self.n_points, 2, self.curriculum_interval))

    def max_input_len(self) -> int:
        return 2 * self.n_points

    def _sample(self, batch: int, generator: torch.Generator, dims: int | None = None,
                points: int | None = None) -> Batch:
        """Prompts of ``points`` examples (all ``n_points`` by default) whose ``x`` use the first ``dims``
        coordinates (the rest zeroed, Garg et al.'s truncation; all ``n_dims`` by default)."""
        device, points = generator.device, self.n_points if points is None else points
        w = torch.randn(batch, self.n_dims, generator=generator, device=device)
        xs = torch.randn(batch, points, self.n_dims, generator=generator, device=device)
        if dims is not None and dims < self.n_dims:
            xs[..., dims:] = 0
        ys = (xs @ w[:, :, None])[..., 0]
        if self.noise_std > 0:
            ys = ys + self.noise_std * torch.randn(batch, points, generator=generator, device=device)
        return regression_prompts(w, xs, ys)

    def train_batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        if not self.curriculum:
            return self._sample(batch_size, generator)
        dims, points = self.stage(self.step)
        return self._sample(batch_size, generator, dims, points)

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
        predictions = {"err": outputs[:, 0::2, 0].float(), "lsq": least_squares_predictions(xs, ys),
                       "avg": averaging_predictions(xs, ys), "knn": nearest_neighbour_predictions(xs, ys),
                       "gd": one_step_gd_predictions(xs, ys, self.noise_std), "zero": torch.zeros_like(ys)}
        curves = {name: self.error_curve(p, batch) for name, p in predictions.items()}
        out = {"error": curves["err"].mean(1)}
        for name, curve in curves.items():
            out.update({f"{name}_k{k}": curve[:, k] for k in range(curve.shape[1])})
        return out

    def summary(self) -> dict:
        out = {"n_dims": self.n_dims, "n_points": self.n_points, "noise_std": self.noise_std,
               "curriculum": self.curriculum, "baselines": ["lsq", "avg", "knn", "gd", "zero"]}
        if self.curriculum:
            out.update(curriculum_start=list(self.curriculum_start), curriculum_interval=self.curriculum_interval,
                       curriculum_increments=[1, 2])
        return out
