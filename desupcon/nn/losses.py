"""Contrastive and distillation losses (docs/design.md#losses).

Conventions shared by every loss in this module:

* embeddings are L2-normalised rows of shape (N, D); labels are integer class ids of shape (N,);
* the maths runs in float32 with autocast switched off (float64 inputs stay float64), in log
  space (logsumexp), and never divides by a count that can be zero;
* malformed input raises ``ValueError`` naming the offending argument.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from desupcon.core.checks import require_in_range

# Floor of the LW-SupCRD weights before their log (see lw_supcrd_loss).
_TINY = torch.finfo(torch.float32).tiny


def _float32(loss):
    """Decorator: run ``loss`` with autocast off and float16/bfloat16 tensor arguments in float32."""

    def upcast(x):
        is_half = torch.is_tensor(x) and x.is_floating_point() and x.dtype != torch.float64
        return x.float() if is_half else x

    @functools.wraps(loss)
    def wrapper(*args, **kwargs):
        args = [upcast(a) for a in args]
        kwargs = {name: upcast(value) for name, value in kwargs.items()}
        tensors = [x for x in [*args, *kwargs.values()] if torch.is_tensor(x)]
        device = tensors[0].device if tensors else torch.device("cpu")
        with torch.autocast(device.type, enabled=False):
            return loss(*args, **kwargs)

    return wrapper


def _check_shapes(**named):
    """Check tensors against symbolic shapes and return the size of every symbol.

    Each keyword maps an argument name to ``(tensor, "N D")``. A symbol must have the same size
    wherever it appears, so ``_check_shapes(q=(q, "N D"), k=(k, "M D"))`` checks that both are
    2-D with a common D and returns ``{"N": ..., "D": ..., "M": ...}``. Empty tensors are
    rejected.
    """
    sizes, source = {}, {}
    for name, (x, dims) in named.items():
        dims = dims.split()
        if x.dim() != len(dims) or x.numel() == 0:
            raise ValueError(
                f"{name} must be a non-empty {len(dims)}-D tensor of shape ({', '.join(dims)}), "
                f"got shape {tuple(x.shape)}"
            )
        for dim, size in zip(dims, x.shape):
            if sizes.setdefault(dim, size) != size:
                raise ValueError(
                    f"{name} has {dim}={size} (shape {tuple(x.shape)}) but "
                    f"{source[dim]} has {dim}={sizes[dim]}"
                )
            source.setdefault(dim, name)
    return sizes


def _check_positive(**values):
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value}")


def _mean_over_positives(log_prob, pos):
    """-log_prob averaged over each anchor's positives, then over anchors that have any.

    log_prob, pos: (N, M). If no anchor has a positive the result is a zero that still
    depends on log_prob, so ``backward()`` works.
    """
    num_pos = pos.sum(1)  # (N,)
    per_anchor = -torch.where(pos, log_prob, 0.0).sum(1) / num_pos.clamp(min=1)  # (N,)
    has_pos = (num_pos > 0).to(per_anchor.dtype)  # (N,)
    return (per_anchor * has_pos).sum() / has_pos.sum().clamp(min=1)


def _info_nce(anchors, keys, targets, temperature):
    """Cross-entropy of the logits anchors·keysᵀ/τ (N, M) against target key indices (N,)."""
    return F.cross_entropy(anchors @ keys.T / temperature, targets)


@_float32
def supcon_loss(z: torch.Tensor, labels: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """Supervised contrastive loss, L_out form.

    Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020,
    https://arxiv.org/abs/2004.11362 (eq. 2)::

        ℓ_i  = -1/|P(i)| Σ_{p ∈ P(i)} log( exp(z_i·z_p/τ) / Σ_{a ≠ i} exp(z_i·z_a/τ) )
        loss = mean of ℓ_i over the anchors with |P(i)| ≥ 1

    With ``positive_terms="pooled"`` (the write-ups' one-line formula read with the positives pooled)
    each anchor has one term instead of one per positive::

        ℓ_i  = -1/α · log( w_pull Σ_{j ∈ P(i)} e^{s_i·t_j/τ}
                 / (w_pull Σ_{j ∈ P(i)} e^{s_i·t_j/τ} + Σ_{k ∈ N(i)} w_push(i,k) e^{s_i·t_k/τ}) )

    with P(i) = {p ≠ i : labels[p] = labels[i]}. Stack the two views along N and repeat the
    labels. Unlike the SupContrast reference code, the loss is not rescaled by τ/base_τ.

    Args:
        z: (N, D) L2-normalised embeddings.
        labels: (N,) integer class ids.
        temperature: τ > 0 (default: 0.07).

    Returns:
        Scalar loss; a differentiable zero when no anchor has a positive.
    """
    n = _check_shapes(z=(z, "N D"), labels=(labels, "N"))["N"]
    _check_positive(temperature=temperature)
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)  # (N, N)
    logits = (z @ z.T / temperature).masked_fill(self_mask, float("-inf"))  # (N, N)
    log_prob = logits - logits.logsumexp(1, keepdim=True)  # (N, N)
    pos = (labels[:, None] == labels[None, :]) & ~self_mask  # (N, N)
    return _mean_over_positives(log_prob, pos)


@_float32
def crd_loss(z_s: torch.Tensor, z_t: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """In-batch contrastive representation distillation (CRD baseline).

    Tian, Krishnan, Isola, "Contrastive Representation Distillation", ICLR 2020,
    https://arxiv.org/abs/1910.10699, with the teacher keys of the batch (plus optional
    memory-bank keys) as the contrast set::

        loss = mean_i -log( exp(s_i·t_i/τ) / Σ_j exp(s_i·t_j/τ) )

    The positive of student anchor i is teacher key i; every other key is a negative.

    Args:
        z_s: (N, D) L2-normalised student embeddings (anchors).
        z_t: (M, D) L2-normalised teacher embeddings (keys), M ≥ N; rows N..M-1 are extra
            negatives such as memory-bank entries.
        temperature: τ > 0 (default: 0.07).
    """
    sizes = _check_shapes(z_s=(z_s, "N D"), z_t=(z_t, "M D"))
    if sizes["M"] < sizes["N"]:
        raise ValueError(
            f"z_t must have at least as many rows as z_s (key i is the positive of anchor i), "
            f"got M={sizes['M']} < N={sizes['N']}"
        )
    _check_positive(temperature=temperature)
    targets = torch.arange(sizes["N"], device=z_s.device)  # (N,)
    return _info_nce(z_s, z_t, targets, temperature)


@_float32
def lw_supcrd_loss(
    z_s: torch.Tensor,
    labels_s: torch.Tensor,
    z_t: torch.Tensor,
    labels_t: torch.Tensor,
    teacher_probs: torch.Tensor,
    alpha: float = 1.0,
    beta: float = 10.0,
    temperature: float = 0.07,
    adaptive_beta: bool = True,
    in_batch_keys: int | None = None,
    target_probs: torch.Tensor | None = None,
    positives: str = "class",
    positive_terms: str = "each",
) -> torch.Tensor:
    """Logit-Weighted Supervised Contrastive Representation Distillation (LW-SupCRD).

    This repository's method (no paper): a supervised contrastive loss (SupCon, Khosla et al.
    2020, https://arxiv.org/abs/2004.11362) between student anchors and teacher keys as in
    CRD (Tian et al. 2020, https://arxiv.org/abs/1910.10699), whose pull and push terms are
    weighted by the teacher's class probabilities p_i on anchor i::

        P(i)        = {j : labels_t[j] = labels_s[i]},   N(i) = the other keys
        w_pull(i)   = α · p_i[y_i]
        β_eff(i)    = β / (q_i + 0.5)   if adaptive_beta else β,   q_i = target_probs[i] or p_i[y_i]
        w_push(i,k) = β_eff(i) · (1 − p_i[y_k])
        ℓ_i  = -1/(α |P(i)|) Σ_{j ∈ P(i)} log( w_pull e^{s_i·t_j/τ}
                 / (w_pull e^{s_i·t_j/τ} + Σ_{k ∈ N(i)} w_push(i,k) e^{s_i·t_k/τ}) )
        loss = mean of ℓ_i over the anchors with |P(i)| ≥ 1

    Weights are floored at the smallest normal float32 (≈1e-38) before their log, so a zero
    weight contributes e^-87 instead of 0: gradients stay finite, and the value is unchanged
    unless p_i[y_i] itself is ~0, where the exact loss would be +inf.

    Args:
        z_s: (N, D) L2-normalised student embeddings of view 1 (anchors).
        labels_s: (N,) anchor labels y_i.
        z_t: (M, D) L2-normalised teacher keys: view 2 of the batch, then any memory-bank
            entries appended.
        labels_t: (M,) key labels y_k.
        teacher_probs: (N, C) softmax of the teacher's logits on each anchor; labels_s and
            labels_t must lie in [0, C).
        alpha: pull strength α > 0 (default: 1.0).
        beta: push strength β ≥ 0 (default: 10.0).
        temperature: τ > 0 (default: 0.07).
        adaptive_beta: scale β by 1 / (p_i[y_i] + 0.5) (default: True).
        in_batch_keys: if given, only keys j < in_batch_keys can be positives; later keys
            (memory-bank entries) are negatives even when they share the anchor's label, as in
            the write-ups' bank ablation (default: None, every same-label key is a positive).
        target_probs: (N,) the probability q_i in β_eff, e.g. the student's own classifier
            probability of y_i (the write-up's "p_target", whose claimed curriculum needs a
            probability that rises during training) (default: None, the teacher's p_i[y_i]).
        positives: "class" (P(i) as above) or "instance" (P(i) = {i}: only key i, the same
            image's other view, is a positive; every other key, same-label ones included, is a
            push-weighted negative; needs M >= N) (default: "class").
        positive_terms: "each" (one log-ratio per positive, averaged: SupCon's L_out) or "pooled"
            (one log-ratio of the pooled positives per anchor) (default: "each").

    Returns:
        Scalar loss; a differentiable zero when no anchor has a positive.
    """
    sizes = _check_shapes(
        z_s=(z_s, "N D"),
        labels_s=(labels_s, "N"),
        z_t=(z_t, "M D"),
        labels_t=(labels_t, "M"),
        teacher_probs=(teacher_probs, "N C"),
    )
    _check_positive(temperature=temperature, alpha=alpha)
    if not beta >= 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if in_batch_keys is not None and not 0 <= in_batch_keys <= sizes["M"]:
        raise ValueError(f"in_batch_keys must lie in [0, M={sizes['M']}], got {in_batch_keys}")
    if positives not in ("class", "instance"):
        raise ValueError(f"positives must be 'class' or 'instance', got {positives!r}")
    if positive_terms not in ("each", "pooled"):
        raise ValueError(f"positive_terms must be 'each' or 'pooled', got {positive_terms!r}")
    if positives == "instance" and sizes["M"] < sizes["N"]:
        raise ValueError(f"positives='instance' pairs anchor i with key i, so z_t needs M >= N rows, got "
                         f"M={sizes['M']} < N={sizes['N']}")
    if target_probs is not None:
        _check_shapes(labels_s=(labels_s, "N"), target_probs=(target_probs, "N"))
    for name, y in (("labels_s", labels_s), ("labels_t", labels_t)):
        require_in_range(name, y, sizes["C"], what="class ids indexing teacher_probs")
    labels_s, labels_t = labels_s.long(), labels_t.long()

    logits = z_s @ z_t.T / temperature  # (N, M)
    if positives == "instance":
        pos = torch.eye(sizes["N"], sizes["M"], dtype=torch.bool, device=z_s.device)  # (N, M)
    else:
        pos = labels_s[:, None] == labels_t[None, :]  # (N, M)
    if in_batch_keys is not None:
        pos[:, in_batch_keys:] = False
    p_true = teacher_probs.gather(1, labels_s[:, None])  # (N, 1)
    q = p_true if target_probs is None else target_probs[:, None]  # (N, 1)
    beta_eff = beta / (q + 0.5) if adaptive_beta else beta  # (N, 1) or scalar
    log_w_pull = (alpha * p_true).clamp(min=_TINY).log()  # (N, 1)
    log_w_push = (beta_eff * (1 - teacher_probs[:, labels_t])).clamp(min=_TINY).log()  # (N, M)

    pull = log_w_pull + logits  # (N, M)
    # An anchor with no negatives gets push = -inf; masked_fill's backward zeroes the NaN that
    # logsumexp's backward produces on such an all -inf row.
    push = (log_w_push + logits).masked_fill(pos, float("-inf"))  # (N, M)
    push = push.logsumexp(1, keepdim=True)  # (N, 1)
    if positive_terms == "pooled":
        pull = pull.masked_fill(~pos, float("-inf")).logsumexp(1, keepdim=True)  # (N, 1) log w_pull Σ_P e^{s·t/τ}
        pos = pos.any(1, keepdim=True)  # (N, 1): one term per anchor that has a positive
        pull = pull.masked_fill(~pos, 0.0)  # an anchor without positives: no term, and no NaN in backward
    log_prob = pull - torch.logaddexp(pull, push)  # (N, M) or (N, 1)
    return _mean_over_positives(log_prob, pos) / alpha


def hybrid_loss(supcon: torch.Tensor, lw_supcrd: torch.Tensor, lam: float) -> torch.Tensor:
    """Hybrid objective of this repository: ``λ·supcon + (1−λ)·lw_supcrd``.

    Args:
        supcon: scalar supcon_loss on the student's two views.
        lw_supcrd: scalar lw_supcrd_loss on the same batch.
        lam: mixing weight λ ∈ [0, 1].
    """
    if not 0 <= lam <= 1:
        raise ValueError(f"lam must lie in [0, 1], got {lam}")
    return lam * supcon + (1 - lam) * lw_supcrd


@_float32
def kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float = 4.0
) -> torch.Tensor:
    """Knowledge distillation loss.

    Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network", 2015,
    https://arxiv.org/abs/1503.02531::

        loss = T² · KL( softmax(teacher_logits/T) || softmax(student_logits/T) ),

    averaged over the batch (the T² keeps gradient magnitudes independent of T).

    Args:
        student_logits: (N, C) student logits.
        teacher_logits: (N, C) teacher logits.
        T: softmax temperature > 0 (default: 4.0).
    """
    _check_shapes(student_logits=(student_logits, "N C"), teacher_logits=(teacher_logits, "N C"))
    _check_positive(T=T)
    log_p_s = F.log_softmax(student_logits / T, dim=1)  # (N, C)
    log_p_t = F.log_softmax(teacher_logits / T, dim=1)  # (N, C)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * T**2


@_float32
def moco_v3_loss(
    q: torch.Tensor,
    k: torch.Tensor,
    temperature: float = 0.2,
    rank: int = 0,
    queue: torch.Tensor | None = None,
) -> torch.Tensor:
    """MoCo v3 contrastive loss for one (query, key) direction.

    Chen, Xie, He, "An Empirical Study of Training Self-Supervised Vision Transformers",
    ICCV 2021, https://arxiv.org/abs/2104.02057::

        loss = 2τ · CE( q·kᵀ/τ, arange(N) + N·rank )

    Under DDP, k holds every rank's keys concatenated in rank order, so the positive of local
    query i is key N·rank + i. The symmetric objective loss(q1, k2) + loss(q2, k1) is the
    caller's, as is detaching the keys (they come from the momentum encoder).

    Args:
        q: (N, D) L2-normalised local queries.
        k: (M, D) L2-normalised keys of all ranks, M = N · world_size.
        temperature: τ > 0 (default: 0.2).
        rank: this process's rank, 0 ≤ rank < M / N (default: 0).
        queue: optional (K, D) extra negative keys appended after k, e.g. a FIFOQueue's keys
            (default: None).
    """
    sizes = _check_shapes(q=(q, "N D"), k=(k, "M D"))
    if queue is not None:
        _check_shapes(q=(q, "N D"), queue=(queue, "K D"))
    _check_positive(temperature=temperature)
    n = sizes["N"]
    if not (0 <= rank and n * (rank + 1) <= sizes["M"]):
        raise ValueError(
            f"rank must satisfy 0 <= rank < M/N = {sizes['M'] // n} (k has M={sizes['M']} rows "
            f"for N={n} queries per rank), got {rank}"
        )
    keys = k if queue is None else torch.cat([k, queue])  # (M [+ K], D)
    targets = torch.arange(n, device=q.device) + n * rank  # (N,)
    return _info_nce(q, keys, targets, temperature) * 2 * temperature
