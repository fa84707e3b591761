"""In-context regression (Garg et al.): prompt layout, scored positions, least squares, metrics, errors."""
from __future__ import annotations

import pytest
import torch

from tasks import TaskConfigError, build_task
from tasks.icl_regression import least_squares_predictions, regression_prompts


def test_prompt_layout_by_hand():
    xs = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])  # (1, n=2, d=2)
    ys = torch.tensor([[5.0, 6.0]])
    b = regression_prompts(torch.zeros(1, 2), xs, ys)
    assert b.inputs.tolist() == [[[1.0, 2.0], [5.0, 0.0], [3.0, 4.0], [6.0, 0.0]]]  # x1, (y1, 0), x2, (y2, 0)
    assert b.targets.tolist() == [[5.0, 0.0, 6.0, 0.0]]
    assert b.mask.tolist() == [[True, False, True, False]]  # y_i scored at the position of x_i


def test_least_squares_on_a_known_case():
    # w = (2, -1): x1 = (1, 0), y1 = 2; x2 = (0, 1), y2 = -1; x3 = (1, 1), y3 = 1
    xs = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    ys = torch.tensor([[2.0, -1.0, 1.0]])
    preds = least_squares_predictions(xs, ys)
    # no example: 0; one example: minimum-norm w = (2, 0) predicts 0 at (0, 1); two: exact w predicts 1
    assert torch.allclose(preds, torch.tensor([[0.0, 0.0, 1.0]]), atol=1e-6)


def test_least_squares_is_exact_from_d_examples_without_noise(generator):
    task = build_task("icl_regression", n_dims=4, n_points=9)
    b = task.train_batch(32, generator)
    metrics = task.metrics(torch.zeros(32, 18, 1), b)
    for k in range(4, 9):
        assert metrics[f"lsq_k{k}"].max() < 1e-8
    assert metrics["lsq_k0"].mean() > 0.3 and torch.allclose(metrics["zero_k3"], metrics["err_k3"])


def test_mask_targets_and_determinism(generator):
    task = build_task("icl_regression", n_dims=3, n_points=5, noise_std=0.0)
    b = task.train_batch(16, generator)
    assert b.inputs.shape == (16, 10, 3) and b.mask.sum(1).eq(5).all() and b.mask[:, 0::2].all()
    w = b.extras["w"]
    assert torch.allclose(b.targets[:, 0::2], (b.inputs[:, 0::2] @ w[:, :, None])[..., 0], atol=1e-5)
    assert torch.equal(b.inputs[:, 1::2, 0], b.targets[:, 0::2]) and (b.inputs[:, 1::2, 1:] == 0).all()
    again = task.train_batch(16, torch.Generator().manual_seed(0))
    assert torch.equal(again.inputs, build_task("icl_regression", n_dims=3, n_points=5).train_batch(
        16, torch.Generator().manual_seed(0)).inputs)
    assert torch.equal(task.eval_sets()["prompts"].inputs, task.eval_sets()["prompts"].inputs)


def test_loss_is_mse_on_scored_positions():
    task = build_task("icl_regression", n_dims=2, n_points=2)
    b = regression_prompts(torch.zeros(1, 2), torch.ones(1, 2, 2), torch.tensor([[1.0, 3.0]]))
    outputs = torch.tensor([[[0.0], [100.0], [1.0], [100.0]]])  # unscored positions ignored
    assert task.loss(outputs, b).item() == pytest.approx((1 + 4) / 2)


@pytest.mark.parametrize("options,field", [
    ({"n_dims": 0}, "task.n_dims"), ({"n_points": 1}, "task.n_points"), ({"noise_std": -1.0}, "task.noise_std"),
])
def test_impossible_parameters_name_the_field(options, field):
    with pytest.raises(TaskConfigError, match=field):
        build_task("icl_regression", **options)
