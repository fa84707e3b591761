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


def test_averaging_and_nearest_neighbour_by_hand():
    from tasks.icl_regression import averaging_predictions, nearest_neighbour_predictions
    xs = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [3.0, 0.0], [0.0, 0.1]]])
    ys = torch.tensor([[2.0, -1.0, 4.0, 6.0, 5.0]])
    # averaging: x_i . mean_{j<i} y_j x_j
    # i=1: w=(2,0) -> 0; i=2: w=((2,0)+(0,-2))/2=(1,-1) -> 0; i=3: w=((2,0)+(0,-2)+(4,4))/3=(2,2/3) -> 6
    # i=4: w=((2,0)+(0,-2)+(4,4)+(18,0))/4=(6,0.5) -> 0.05
    assert torch.allclose(averaging_predictions(xs, ys), torch.tensor([[0.0, 0.0, 0.0, 6.0, 0.05]]), atol=1e-6)
    # 3-NN: i=1 and i=2 average all examples before; i=3 at (3,0): all three (only three); i=4 at (0,0.1):
    # distances^2 to (1,0),(0,2),(1,1),(3,0) = 1.01, 3.61, 1.81, 9.01 -> the first three: (2 - 1 + 4) / 3
    expected = torch.tensor([[0.0, 2.0, 0.5, 5.0 / 3, 5.0 / 3]])
    assert torch.allclose(nearest_neighbour_predictions(xs, ys), expected, atol=1e-6)


def test_one_step_gd_step_size_by_hand_and_its_expected_error(generator):
    from tasks.icl_regression import one_step_gd_predictions
    xs = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]])  # d = 2
    ys = torch.tensor([[2.0, -1.0, 4.0]])
    # k=1: eta = 1/4, w = (2, 0)/4 -> at (0, 2): 0; k=2: eta = 1/5, w = ((2,0)+(0,-2))/5 -> at (1,1): 0
    assert torch.allclose(one_step_gd_predictions(xs, ys), torch.zeros(1, 3), atol=1e-6)
    xs2 = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])
    assert one_step_gd_predictions(xs2, torch.tensor([[3.0, 0.0]]))[0, 1].item() == pytest.approx(3.0 / 4)
    # under the prior the expected error / d is (d + 1) / (k + d + 1), below averaging's (d + 1) / k
    task = build_task("icl_regression", n_dims=4, n_points=9, eval_samples=20000)
    m = task.metrics(torch.zeros(20000, 18, 1), task.eval_sets()["prompts"])
    for k in (1, 4, 8):
        assert m[f"gd_k{k}"].mean().item() == pytest.approx(5 / (k + 5), rel=0.06)
        assert m[f"avg_k{k}"].mean().item() == pytest.approx(5 / k, rel=0.06)
    assert m["knn_k8"].mean() > m["gd_k8"].mean() > m["lsq_k8"].mean()


def test_curriculum_schedule_zeroes_unused_coordinates(generator):
    task = build_task("icl_regression", n_dims=8, n_points=17, curriculum=True)
    assert [task.stage(s) for s in (0, 1999, 2000, 4000, 5999, 6000, 100_000)] == [
        (5, 11), (5, 11), (6, 13), (7, 15), (7, 15), (8, 17), (8, 17)]
    task.set_step(2500)
    b = task.train_batch(16, generator)
    xs = b.inputs[:, 0::2]
    assert b.inputs.shape == (16, 26, 8) and (xs[..., 6:] == 0).all() and (xs[..., :6] != 0).all()
    assert torch.allclose(b.targets[:, 0::2], (xs @ b.extras["w"][:, :, None])[..., 0], atol=1e-5)
    assert task.eval_sets()["prompts"].inputs.shape == (1280, 34, 8)  # evaluation at full size
    assert build_task("icl_regression", n_dims=8, n_points=17).stage(0) == (8, 17)  # off: full size from step 0


def test_training_loop_tells_the_task_its_step():
    from harness.run.train import TrainConfig, train
    from harness.run.model import SequenceModel
    task = build_task("icl_regression", n_dims=3, n_points=7, eval_samples=8, curriculum=True,
                      curriculum_start_dims=1, curriculum_start_points=3, curriculum_interval=2)
    seen = []
    draw = task.train_batch
    task.train_batch = lambda *a: seen.append(draw(*a).inputs.shape[1]) or draw(*a)
    model = SequenceModel(0, 16, 1, 14, "attention", input_dim=3, output_dim=1)
    cfg = TrainConfig(profile="test", steps=6, batch_size=2, lr=1e-3, weight_decay=0.0, betas=(0.9, 0.95),
                      warmup_steps=0, min_lr_ratio=0.1, grad_clip=1.0, eval_every=6, eval_batch_size=8,
                      precision="fp32", progress=False, weight_decay_exempt="conventions", schedule="cosine")
    train(model, task, cfg, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert seen == [6, 6, 10, 10, 14, 14]  # 3, 5, 7 examples: 2 positions each


@pytest.mark.parametrize("options,field", [
    ({"curriculum": True, "curriculum_start_dims": 9}, "task.curriculum_start_dims"),
    ({"curriculum": True, "curriculum_start_points": 1}, "task.curriculum_start_points"),
    ({"curriculum": True, "curriculum_interval": 0}, "task.curriculum_interval"),
])
def test_impossible_curriculum_names_the_field(options, field):
    with pytest.raises(TaskConfigError, match=field):
        build_task("icl_regression", **options)
