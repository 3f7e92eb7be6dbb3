"""desupcon.nn.losses against independent references: pytorch-metric-learning and naive loops."""

import math

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import SupConLoss

from desupcon.nn.losses import crd_loss, hybrid_loss, kd_loss, lw_supcrd_loss, moco_v3_loss, supcon_loss


def unit(*shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=dtype), dim=-1)


def probs(n, c, seed=0, sharpness=2.0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(sharpness * torch.randn(n, c, generator=g, dtype=torch.float64), dim=1)


# ---- naive references, written straight from docs/design.md#losses with Python floats ----------------------


def dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def naive_crd(z_s, z_t, tau):
    s, t = z_s.tolist(), z_t.tolist()
    losses = []
    for i in range(len(s)):
        denom = sum(math.exp(dot(s[i], t[j]) / tau) for j in range(len(t)))
        losses.append(-math.log(math.exp(dot(s[i], t[i]) / tau) / denom))
    return sum(losses) / len(losses)


def naive_lw_supcrd(z_s, labels_s, z_t, labels_t, teacher_probs, alpha, beta, tau, adaptive,
                    in_batch_keys=None, target_probs=None, positives="class", positive_terms="each"):
    s, t, p = z_s.tolist(), z_t.tolist(), teacher_probs.tolist()
    ys, yt = labels_s.tolist(), labels_t.tolist()
    q = [p[i][ys[i]] for i in range(len(s))] if target_probs is None else target_probs.tolist()
    limit = len(t) if in_batch_keys is None else in_batch_keys
    losses = []
    for i in range(len(s)):
        y = ys[i]
        if positives == "instance":
            positives_i = [i]
        else:
            positives_i = [j for j in range(len(t)) if yt[j] == y and j < limit]
        negatives = [k for k in range(len(t)) if k not in positives_i]
        if not positives_i:
            continue
        w_pull = alpha * p[i][y]
        beta_eff = beta / (q[i] + 0.5) if adaptive else beta
        push = sum(beta_eff * (1 - p[i][yt[k]]) * math.exp(dot(s[i], t[k]) / tau) for k in negatives)
        if positive_terms == "pooled":  # one term: the pull on the sum over the positives
            pull = w_pull * sum(math.exp(dot(s[i], t[j]) / tau) for j in positives_i)
            losses.append(-math.log(pull / (pull + push)) / alpha)
            continue
        total = 0.0
        for j in positives_i:
            pull = w_pull * math.exp(dot(s[i], t[j]) / tau)
            total += math.log(pull / (pull + push))
        losses.append(-total / len(positives_i) / alpha)
    return sum(losses) / len(losses) if losses else 0.0


# ---- SupCon ------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("tau", [0.07, 0.5])
def test_supcon_matches_pytorch_metric_learning(seed, tau):
    z = unit(32, 16, seed=seed)
    labels = torch.arange(32) % 5  # every anchor has positives
    expected = SupConLoss(temperature=tau)(z, labels)
    assert supcon_loss(z, labels, temperature=tau).item() == pytest.approx(expected.item(), rel=1e-10)


def test_supcon_leaves_out_anchors_without_positives():
    z = unit(12, 8, seed=3)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2, 3, 4, 5, 6, 7])  # anchors 7..11 are alone
    expected = SupConLoss(temperature=0.1)(z, labels)  # PML also averages over anchors with positives
    assert supcon_loss(z, labels, temperature=0.1).item() == pytest.approx(expected.item(), rel=1e-10)


@pytest.mark.parametrize("n", [1, 5])
def test_supcon_without_any_positive_is_a_differentiable_zero(n):
    z = unit(n, 4).requires_grad_()
    loss = supcon_loss(z, torch.arange(n))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(z.grad, torch.zeros_like(z))


# ---- CRD ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("m", [8, 13])  # 13: five memory-bank keys appended
def test_crd_matches_naive_loop(m):
    z_s, z_t = unit(8, 6, seed=0), unit(m, 6, seed=1)
    expected = naive_crd(z_s, z_t, 0.1)
    assert crd_loss(z_s, z_t, temperature=0.1).item() == pytest.approx(expected, rel=1e-10)


# ---- LW-SupCRD ---------------------------------------------------------------------------------


@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize(
    "labels_s, labels_t",
    [
        ([0, 1, 2, 0, 1, 2, 3, 0], [0, 1, 2, 0, 1, 2, 3, 0]),  # keys = view 2 of the batch
        ([0, 1, 2, 0, 1, 2, 3, 0], [0, 1, 2, 0, 1, 2, 3, 0, 4, 1, 3, 4]),  # plus 4 bank keys
        ([0, 1, 2, 3, 4, 2, 3, 1], [0, 1, 1, 1, 4, 4, 1, 0, 0, 4]),  # anchors 2, 3, 5, 6 lack positives
    ],
)
def test_lw_supcrd_matches_naive_loop(labels_s, labels_t, adaptive):
    labels_s, labels_t = torch.tensor(labels_s), torch.tensor(labels_t)
    z_s, p = unit(len(labels_s), 5, seed=4), probs(len(labels_s), 5)
    z_t = unit(len(labels_t), 5, seed=5)
    kwargs = dict(alpha=2.0, beta=5.0, temperature=0.1, adaptive_beta=adaptive)
    loss = lw_supcrd_loss(z_s, labels_s, z_t, labels_t, p, **kwargs)
    expected = naive_lw_supcrd(z_s, labels_s, z_t, labels_t, p, 2.0, 5.0, 0.1, adaptive)
    assert loss.item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("adaptive", [False, True])
def test_lw_supcrd_pooled_positive_terms_match_a_naive_loop(adaptive):
    labels_s = torch.tensor([0, 1, 2, 0, 1, 2, 3, 0])
    labels_t = torch.tensor([0, 1, 2, 0, 1, 2, 3, 0, 4, 1, 3, 4, 5])  # anchor 6's only positive is key 6
    z_s, p = unit(8, 6, seed=6), probs(8, 6)
    z_t = unit(13, 6, seed=7)
    kwargs = dict(alpha=2.0, beta=5.0, temperature=0.1, adaptive_beta=adaptive)
    pooled = lw_supcrd_loss(z_s, labels_s, z_t, labels_t, p, positive_terms="pooled", **kwargs)
    expected = naive_lw_supcrd(z_s, labels_s, z_t, labels_t, p, 2.0, 5.0, 0.1, adaptive, positive_terms="pooled")
    assert pooled.item() == pytest.approx(expected, rel=1e-10)
    each = naive_lw_supcrd(z_s, labels_s, z_t, labels_t, p, 2.0, 5.0, 0.1, adaptive)
    assert abs(pooled.item() - each) > 1e-3  # the two readings differ wherever an anchor has several positives
    z = z_s.clone().requires_grad_(True)  # anchors without positives: no term and finite gradients
    lw_supcrd_loss(z, torch.tensor([0, 1, 2, 0, 1, 2, 5, 0]), z_t[:8], labels_t[:8], p, positive_terms="pooled",
                   **kwargs).backward()
    assert torch.isfinite(z.grad).all()


def test_lw_supcrd_in_batch_keys_makes_bank_keys_negatives():
    labels_s = torch.tensor([0, 1, 2, 0, 1, 2])
    labels_t = torch.cat([labels_s, torch.tensor([0, 1, 2, 2, 1])])  # bank keys share labels
    z_s, z_t, p = unit(6, 4, seed=6), unit(11, 4, seed=7), probs(6, 3, seed=8)
    loss = lw_supcrd_loss(z_s, labels_s, z_t, labels_t, p, temperature=0.2, in_batch_keys=6)
    expected = naive_lw_supcrd(z_s, labels_s, z_t, labels_t, p, 1.0, 10.0, 0.2, True, in_batch_keys=6)
    assert loss.item() == pytest.approx(expected, rel=1e-10)
    as_positives = naive_lw_supcrd(z_s, labels_s, z_t, labels_t, p, 1.0, 10.0, 0.2, True)
    assert expected != pytest.approx(as_positives, rel=1e-3)  # the flag matters on this input


def test_lw_supcrd_without_any_positive_is_a_differentiable_zero():
    z_s = unit(3, 4).requires_grad_()
    labels_s, labels_t = torch.tensor([0, 1, 2]), torch.tensor([3, 3, 3])
    loss = lw_supcrd_loss(z_s, labels_s, unit(3, 4, seed=1), labels_t, probs(3, 4))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(z_s.grad, torch.zeros_like(z_s))


def test_lw_supcrd_with_uniform_teacher_reduces_to_closed_form():
    # α = β = 1, fixed β, p_i = 1/C: w_pull = 1/C and w_push = 1 − 1/C, so
    # ℓ_i = −mean_{j∈P(i)} log( e^{l_ij} / (e^{l_ij} + (C−1) Σ_{k∈N(i)} e^{l_ik}) ).
    c, tau = 4, 0.1
    labels_s = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 0, 1])
    labels_t = torch.cat([labels_s, torch.tensor([3, 2, 1, 0])])
    z_s, z_t = unit(10, 6, seed=9), unit(14, 6, seed=10)
    uniform = torch.full((10, c), 1.0 / c, dtype=torch.float64)
    loss = lw_supcrd_loss(
        z_s, labels_s, z_t, labels_t, uniform, alpha=1.0, beta=1.0, temperature=tau, adaptive_beta=False
    )

    e = torch.exp(z_s @ z_t.T / tau)  # (N, M)
    pos = (labels_s[:, None] == labels_t[None, :]).double()
    neg_sum = (e * (1 - pos)).sum(1, keepdim=True)
    log_ratio = torch.log(e / (e + (c - 1) * neg_sum))
    expected = (-(log_ratio * pos).sum(1) / pos.sum(1)).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-10)


def lw_inputs(scale=1.0, one_hot=False, seed=11):
    labels_s = torch.tensor([0, 1, 2, 0, 1, 2, 3, 3])
    labels_t = torch.cat([labels_s, torch.tensor([0, 1, 2, 3])])
    z_s = (scale * unit(8, 6, seed=seed, dtype=torch.float32)).requires_grad_()
    z_t = (scale * unit(12, 6, seed=seed + 1, dtype=torch.float32)).requires_grad_()
    p = probs(8, 4, seed=seed).float()
    if one_hot:  # half the anchors: teacher certain and right; the other half: certain and wrong
        p = F.one_hot((labels_s + torch.tensor([0, 1] * 4)) % 4, 4).float()
    return z_s, labels_s, z_t, labels_t, p.requires_grad_()


@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("scale, one_hot", [(1.0, False), (1.0, True), (100.0, False), (100.0, True)])
def test_lw_supcrd_gradients_are_finite(scale, one_hot, adaptive):
    z_s, labels_s, z_t, labels_t, p = lw_inputs(scale, one_hot)
    kwargs = dict(alpha=10.0, temperature=0.05, adaptive_beta=adaptive)
    loss = lw_supcrd_loss(z_s, labels_s, z_t, labels_t, p, **kwargs)
    loss.backward()
    assert torch.isfinite(loss)
    for x in (z_s, z_t, p):
        assert torch.isfinite(x.grad).all()
    assert z_s.grad.abs().sum() > 0


def test_lw_supcrd_gradients_are_finite_when_an_anchor_has_no_negative():
    z_s = unit(3, 4, dtype=torch.float32).requires_grad_()
    labels = torch.tensor([1, 1, 1])  # every key is a positive of every anchor: ℓ_i = −log 1 = 0
    z_t = unit(3, 4, seed=1, dtype=torch.float32)
    loss = lw_supcrd_loss(z_s, labels, z_t, labels, probs(3, 2).float())
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    assert torch.isfinite(z_s.grad).all()


def test_lw_supcrd_gradcheck():
    labels_s, labels_t = torch.tensor([0, 1, 0]), torch.tensor([0, 1, 0, 2, 1])
    z_s = unit(3, 4, seed=12).requires_grad_()
    z_t = unit(5, 4, seed=13).requires_grad_()
    p = probs(3, 3, seed=14).requires_grad_()

    def loss(z_s, z_t, p):
        return lw_supcrd_loss(z_s, labels_s, z_t, labels_t, p, alpha=2.0, beta=3.0, temperature=0.5)

    assert torch.autograd.gradcheck(loss, (z_s, z_t, p))


# ---- hybrid, KD, MoCo v3 -----------------------------------------------------------------------


def test_hybrid_is_a_convex_combination():
    assert hybrid_loss(torch.tensor(2.0), torch.tensor(6.0), lam=0.25).item() == pytest.approx(5.0)


def test_kd_matches_direct_kl():
    g = torch.Generator().manual_seed(15)
    s, t = torch.randn(2, 6, 10, generator=g, dtype=torch.float64)
    T = 3.0
    p_s, p_t = torch.softmax(s / T, 1), torch.softmax(t / T, 1)
    expected = (p_t * (p_t.log() - p_s.log())).sum() / 6 * T**2
    assert kd_loss(s, t, T=T).item() == pytest.approx(expected.item(), rel=1e-10)


@pytest.mark.parametrize("rank, world_size", [(0, 1), (0, 3), (2, 3)])
@pytest.mark.parametrize("queue_size", [0, 7])
def test_moco_v3_matches_cross_entropy(rank, world_size, queue_size):
    n, tau = 4, 0.2
    q, k = unit(n, 8, seed=16), unit(n * world_size, 8, seed=17)
    queue = unit(queue_size, 8, seed=18) if queue_size else None
    keys = k if queue is None else torch.cat([k, queue])
    logits = q @ keys.T / tau
    expected = 2 * tau * F.cross_entropy(logits, torch.arange(n) + n * rank)
    loss = moco_v3_loss(q, k, temperature=tau, rank=rank, queue=queue)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-10)
    if world_size > 1:  # the rank offset matters on this input
        other = 2 * tau * F.cross_entropy(logits, torch.arange(n) + n * ((rank + 1) % world_size))
        assert loss.item() != pytest.approx(other.item(), rel=1e-3)


# ---- precision ---------------------------------------------------------------------------------

LABELS = torch.arange(16) % 4
PROBS = torch.softmax(5 * unit(16, 4, seed=21, dtype=torch.float32), dim=1)


@pytest.mark.parametrize(
    "loss",
    [
        lambda a, b: supcon_loss(a, LABELS),
        lambda a, b: crd_loss(a, b),
        lambda a, b: lw_supcrd_loss(a, LABELS, b, LABELS, PROBS),
        lambda a, b: kd_loss(a, b),
        lambda a, b: moco_v3_loss(a, b),
    ],
    ids=["supcon", "crd", "lw_supcrd", "kd", "moco_v3"],
)
def test_losses_run_in_float32_under_autocast(loss):
    a, b = unit(16, 32, seed=19, dtype=torch.bfloat16), unit(16, 32, seed=20, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(a, b)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(loss(a.float(), b.float()).item(), rel=1e-6)


# ---- validation --------------------------------------------------------------------------------

Z, Y, P, ONE = unit(4, 3), torch.tensor([0, 1, 0, 1]), probs(4, 2), torch.tensor(1.0)


def test_lw_supcrd_target_probs_replace_the_teacher_probability_in_the_adaptive_beta_only():
    labels_s = torch.tensor([0, 1, 2, 0, 1, 2, 3, 0])
    labels_t = torch.cat([labels_s, torch.tensor([1, 3, 0])])
    z_s, z_t, p = unit(8, 5, seed=12), unit(11, 5, seed=13), probs(8, 4, seed=14)
    q = torch.rand(8, generator=torch.Generator().manual_seed(15), dtype=torch.float64)
    loss = lw_supcrd_loss(z_s, labels_s, z_t, labels_t, p, beta=5.0, temperature=0.1, target_probs=q)
    expected = naive_lw_supcrd(z_s, labels_s, z_t, labels_t, p, 1.0, 5.0, 0.1, True, target_probs=q)
    assert loss.item() == pytest.approx(expected, rel=1e-10)
    assert expected != pytest.approx(naive_lw_supcrd(z_s, labels_s, z_t, labels_t, p, 1.0, 5.0, 0.1, True), rel=1e-3)
    own = p.gather(1, labels_s[:, None]).squeeze(1)  # the default is the teacher's own p_i[y_i]
    assert lw_supcrd_loss(z_s, labels_s, z_t, labels_t, p, beta=5.0, temperature=0.1, target_probs=own).item() == \
        pytest.approx(lw_supcrd_loss(z_s, labels_s, z_t, labels_t, p, beta=5.0, temperature=0.1).item(), rel=1e-12)
    fixed = dict(beta=5.0, temperature=0.1, adaptive_beta=False)  # without the adaptive beta q is unused
    assert lw_supcrd_loss(z_s, labels_s, z_t, labels_t, p, target_probs=q, **fixed).item() == \
        pytest.approx(lw_supcrd_loss(z_s, labels_s, z_t, labels_t, p, **fixed).item(), rel=1e-12)


@pytest.mark.parametrize("extra_keys", [0, 3])
def test_lw_supcrd_instance_positives_are_only_the_same_image_s_key(extra_keys):
    labels_s = torch.tensor([0, 1, 2, 0, 1, 2, 3, 0])
    labels_t = torch.cat([labels_s, torch.tensor([1, 3, 0])[:extra_keys]])
    z_s, z_t, p = unit(8, 5, seed=16), unit(8 + extra_keys, 5, seed=17), probs(8, 4, seed=18)
    loss = lw_supcrd_loss(z_s, labels_s, z_t, labels_t, p, alpha=2.0, temperature=0.1, positives="instance")
    expected = naive_lw_supcrd(z_s, labels_s, z_t, labels_t, p, 2.0, 10.0, 0.1, True, positives="instance")
    assert loss.item() == pytest.approx(expected, rel=1e-10)
    assert expected != pytest.approx(naive_lw_supcrd(z_s, labels_s, z_t, labels_t, p, 2.0, 10.0, 0.1, True), rel=1e-3)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: supcon_loss(Z[0], Y), r"z must be a non-empty 2-D"),
        (lambda: supcon_loss(Z, Y[:3]), r"labels has N=3 .* but z has N=4"),
        (lambda: supcon_loss(Z, Y, temperature=0.0), r"temperature must be > 0"),
        (lambda: crd_loss(Z, unit(4, 5)), r"z_t has D=5 .* but z_s has D=3"),
        (lambda: crd_loss(Z, Z[:3]), r"z_t must have at least as many rows as z_s"),
        (lambda: crd_loss(Z, Z, temperature=-1), r"temperature must be > 0"),
        (lambda: lw_supcrd_loss(Z, Y, unit(5, 3), Y, P), r"labels_t has M=4 .* but z_t has M=5"),
        (lambda: lw_supcrd_loss(Z, Y, Z, Y, P[:3]), r"teacher_probs has N=3 .* but z_s has N=4"),
        (lambda: lw_supcrd_loss(Z, Y, Z, Y + 1, P), r"labels_t must lie in \[0, 2\)"),
        (lambda: lw_supcrd_loss(Z, Y - 1, Z, Y, P), r"labels_s must lie in \[0, 2\)"),
        (lambda: lw_supcrd_loss(Z, Y.float(), Z, Y, P), r"labels_s must hold integer class ids"),
        (lambda: lw_supcrd_loss(Z, Y, Z, Y, P, temperature=0), r"temperature must be > 0"),
        (lambda: lw_supcrd_loss(Z, Y, Z, Y, P, alpha=0), r"alpha must be > 0"),
        (lambda: lw_supcrd_loss(Z, Y, Z, Y, P, beta=-1), r"beta must be >= 0"),
        (lambda: lw_supcrd_loss(Z, Y, Z, Y, P, in_batch_keys=5), r"in_batch_keys must lie in \[0, M=4\]"),
        (lambda: lw_supcrd_loss(Z, Y, Z, Y, P, positives="label"), r"positives must be 'class' or 'instance'"),
        (lambda: lw_supcrd_loss(Z, Y, Z[:3], Y[:3], P, positives="instance"), r"needs M >= N rows, got M=3 < N=4"),
        (lambda: lw_supcrd_loss(Z, Y, Z, Y, P, target_probs=P[:, 0][:3]), r"target_probs has N=3"),
        (lambda: hybrid_loss(ONE, ONE, lam=1.5), r"lam must lie in \[0, 1\]"),
        (lambda: hybrid_loss(ONE, ONE, lam=-0.1), r"lam must lie in \[0, 1\]"),
        (lambda: kd_loss(P, probs(4, 3)), r"teacher_logits has C=3 .* but student_logits has C=2"),
        (lambda: kd_loss(P, P, T=0), r"T must be > 0"),
        (lambda: moco_v3_loss(Z, unit(8, 4)), r"k has D=4 .* but q has D=3"),
        (lambda: moco_v3_loss(Z, Z, queue=unit(6, 5)), r"queue has D=5 .* but q has D=3"),
        (lambda: moco_v3_loss(Z, unit(8, 3), rank=2), r"rank must satisfy 0 <= rank < M/N = 2"),
        (lambda: moco_v3_loss(Z, Z, temperature=0), r"temperature must be > 0"),
    ],
)
def test_bad_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()
