"""desupcon.engine.metrics against direct float64 formulas and naive loops."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from desupcon.engine import metrics
from desupcon.engine.metrics import alignment, class_distances, representation_metrics, rows_per_block, uniformity


def _sphere(n, d, seed=0):
    """(n, d) random points on the unit sphere."""
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


def _direct_uniformity(x, t=2.0):
    """log of the mean of exp(-t‖x_i − x_j‖²) over i < j, from the full float64 distance matrix."""
    x = x.double()
    sq = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)  # (N, N)
    i, j = torch.triu_indices(len(x), len(x), offset=1)
    return torch.exp(-t * sq[i, j]).mean().log()


def _naive_class_distances(x, labels):
    """Intra/inter-class mean distances by looping over every pair."""
    same, different = [], []
    for i, j in itertools.combinations(range(len(x)), 2):
        d = math.dist(x[i].tolist(), x[j].tolist())
        (same if labels[i] == labels[j] else different).append(d)
    intra, inter = sum(same) / len(same), sum(different) / len(different)
    return intra, inter, inter / intra


def test_alignment_matches_formula():
    x, y = _sphere(40, 8, seed=1), _sphere(40, 8, seed=2)
    for alpha in (1, 2, 3):
        expected = sum(math.dist(a.tolist(), b.tolist()) ** alpha for a, b in zip(x, y)) / len(x)
        assert alignment(x, y, alpha=alpha).item() == pytest.approx(expected, rel=1e-5)


def test_alignment_of_identical_pairs_is_zero():
    x = _sphere(30, 16)
    assert alignment(x, x).item() == 0.0


@pytest.mark.parametrize("t", [1.0, 2.0, 5.0])
def test_uniformity_matches_full_matrix(t):
    x = _sphere(50, 12)
    assert uniformity(x, t=t).item() == pytest.approx(_direct_uniformity(x, t).item(), abs=1e-5)


@pytest.mark.parametrize("batch_size", [1, 7, 49, 50, 1000])
def test_uniformity_batched_equals_direct(batch_size):
    x = _sphere(50, 12, seed=3)
    expected = _direct_uniformity(x).item()
    assert uniformity(x, batch_size=batch_size).item() == pytest.approx(expected, abs=1e-5)


def test_uniformity_prefers_spread_points_to_a_cluster():
    angles = torch.linspace(0, 2 * math.pi, 65)[:-1]
    circle = torch.stack([angles.cos(), angles.sin()], dim=1)  # (64, 2)
    cluster = F.normalize(torch.tensor([1.0, 0.0]) + 0.05 * torch.randn(64, 2), dim=1)
    assert uniformity(circle) < uniformity(cluster)


def test_uniformity_of_identical_points_is_zero():
    assert uniformity(torch.ones(10, 4) / 2).item() == pytest.approx(0.0, abs=1e-6)


def test_uniformity_large_input_in_blocks():
    x = _sphere(10_000, 64)
    value = uniformity(x, batch_size=1024)
    assert torch.isfinite(value)
    assert -4.0 < value.item() < 0.0


def test_uniformity_keeps_gradients():
    x = _sphere(20, 8).requires_grad_()
    uniformity(x, batch_size=6).backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("batch_size", [1, 7, 49, 50, 4096, None])
def test_class_distances_match_naive_loops(batch_size):
    x = _sphere(50, 6, seed=4)
    labels = torch.randint(0, 5, (50,), generator=torch.Generator().manual_seed(0))
    result = class_distances(x, labels, batch_size=batch_size)
    intra, inter, ratio = _naive_class_distances(x, labels.tolist())
    assert result["intra_class"].item() == pytest.approx(intra, rel=1e-5)
    assert result["inter_class"].item() == pytest.approx(inter, rel=1e-5)
    assert result["separation_ratio"].item() == pytest.approx(ratio, rel=1e-5)


def test_uniformity_gradient_equals_the_full_matrix_gradient():
    x = _sphere(40, 6, seed=9).double()
    blocked, direct = x.clone().requires_grad_(), x.clone().requires_grad_()
    uniformity(blocked, batch_size=7).backward()
    _direct_uniformity(direct).backward()
    assert torch.allclose(blocked.grad, direct.grad, atol=1e-12)
    assert blocked.grad.abs().max() > 1e-3


def test_uniformity_of_far_apart_points_does_not_underflow():
    x = 10 * torch.randn(30, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    value = uniformity(x, batch_size=4)
    assert value.item() < -50  # every exp(−t‖x_i − x_j‖²) underflows to 0 in float64 without the max shift
    assert value.item() == pytest.approx(_direct_uniformity(x).item(), rel=1e-9)


def test_class_distances_separate_well_clustered_classes():
    centres = torch.eye(4)
    labels = torch.arange(4).repeat_interleave(25)
    x = F.normalize(centres[labels] + 0.05 * torch.randn(100, 4), dim=1)
    assert class_distances(x, labels)["separation_ratio"] > 5


def test_representation_metrics_returns_plain_floats():
    z1 = _sphere(60, 16, seed=5)
    z2 = F.normalize(z1 + 0.1 * _sphere(60, 16, seed=6), dim=1)
    labels = torch.arange(60) % 6
    result = representation_metrics(z1, z2, labels)
    assert set(result) == {"alignment", "uniformity", "intra_class", "inter_class", "separation_ratio"}
    assert all(type(v) is float and math.isfinite(v) for v in result.values())
    assert result["alignment"] == pytest.approx(alignment(z1, z2).item(), rel=1e-5)
    assert result["uniformity"] == pytest.approx(_direct_uniformity(z1).item(), abs=1e-5)


def test_representation_metrics_normalises_inputs():
    z1, z2 = _sphere(30, 8, seed=7), _sphere(30, 8, seed=8)
    labels = torch.arange(30) % 3
    expected = representation_metrics(z1, z2, labels)
    assert representation_metrics(3 * z1, 0.5 * z2, labels) == pytest.approx(expected)


@pytest.mark.parametrize("n_cols, bytes_per_entry, budget", [(10_000, 5, 64 * 2**20), (3000, 6, 2**20), (7, 4, 100)])
def test_rows_per_block_fit_the_budget(n_cols, bytes_per_entry, budget):
    rows = rows_per_block(n_cols, bytes_per_entry, budget)
    assert rows * n_cols * bytes_per_entry <= budget < (rows + 1) * n_cols * bytes_per_entry


def test_rows_per_block_defaults_to_the_module_budget_and_keeps_one_row(monkeypatch):
    monkeypatch.setattr(metrics, "BLOCK_BYTES", 1000)
    assert rows_per_block(10, 4) == 25
    assert rows_per_block(10_000, 4) == 1  # a row larger than the budget still makes progress


def test_pairwise_metrics_stay_within_the_block_budget(monkeypatch, largest_tensor):
    """Under a 1 MiB budget no tensor reaches that size (the N x N float32 matrix would be 36 MB), and
    the results equal float64 references from the full distance matrix."""
    x = _sphere(3000, 8, seed=10)
    labels = torch.randint(0, 20, (3000,), generator=torch.Generator().manual_seed(1))
    dist = torch.cdist(x.double(), x.double())  # (N, N)
    pair = torch.ones_like(dist, dtype=torch.bool).triu_(1)
    same = labels[:, None] == labels[None, :]
    expected_uniformity = torch.exp(-2 * dist[pair] ** 2).mean().log().item()
    expected_intra, expected_inter = dist[pair & same].mean().item(), dist[pair & ~same].mean().item()
    budget = 2**20
    monkeypatch.setattr(metrics, "BLOCK_BYTES", budget)
    with largest_tensor() as largest:
        value = uniformity(x)
        distances = class_distances(x, labels)
    assert largest.bytes <= budget
    assert value.item() == pytest.approx(expected_uniformity, abs=1e-5)
    assert distances["intra_class"].item() == pytest.approx(expected_intra, rel=1e-5)
    assert distances["inter_class"].item() == pytest.approx(expected_inter, rel=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_metrics_run_on_the_input_device():
    x, labels = _sphere(300, 16).cuda(), (torch.arange(300) % 7).cuda()
    assert uniformity(x, batch_size=64).device == x.device
    assert uniformity(x, batch_size=64).item() == pytest.approx(uniformity(x.cpu()).item(), abs=1e-5)
    assert class_distances(x, labels)["intra_class"].item() == pytest.approx(
        class_distances(x.cpu(), labels.cpu())["intra_class"].item(), rel=1e-5
    )


@pytest.mark.parametrize(
    "call, argument",
    [
        (lambda: alignment(torch.zeros(4, 3), torch.zeros(5, 3)), "x and y"),
        (lambda: alignment(torch.zeros(4), torch.zeros(4)), "x must"),
        (lambda: uniformity(torch.zeros(1, 3)), "x needs"),
        (lambda: uniformity(torch.zeros(4, 3), batch_size=0), "batch_size"),
        (lambda: class_distances(torch.zeros(4, 3), torch.arange(4) % 2, batch_size=0), "batch_size"),
        (lambda: rows_per_block(0, 4), "n_cols"),
        (lambda: uniformity(torch.zeros(4, 3), t=0), "t must"),
        (lambda: class_distances(torch.zeros(4, 3), torch.zeros(5)), "labels must have shape"),
        (lambda: class_distances(torch.randn(4, 3), torch.arange(4)), "labels must contain"),
        (lambda: representation_metrics(torch.zeros(4, 3), None, torch.zeros(4)), "z2"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(call, argument):
    with pytest.raises(ValueError, match=argument):
        call()
