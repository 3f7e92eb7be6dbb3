"""Geometry of embeddings on the unit hypersphere.

Alignment and uniformity are the two properties of Wang & Isola, "Understanding Contrastive
Representation Learning through Alignment and Uniformity on the Hypersphere", ICML 2020
(https://arxiv.org/abs/2005.10242). Class distances measure how far apart classes sit on the
sphere relative to how tight each class is.

Pairwise quantities are computed block by block (``batch_size`` rows against all later rows), so
memory grows as ``batch_size × N`` and never as ``N × N``. Everything runs on the device of the
input tensor.
"""

import math

import torch
import torch.nn.functional as F


def _check_embeddings(x, name):
    """Return ``x`` as a tensor after checking it is a non-empty (N, D) matrix."""
    if x is None:
        raise ValueError(f"{name} must be an (N, D) matrix, got None")
    x = torch.as_tensor(x)
    if x.dim() != 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty (N, D) matrix, got shape {tuple(x.shape)}")
    return x


def _upper_tiles(x, batch_size):
    """Yield ``(rows, cols, sq_dist)`` for the pairs i < j of ``x``, one block of rows at a time.

    ``rows`` (B, 1) and ``cols`` (1, N - start) are the pair indices; ``sq_dist`` (B, N - start)
    holds squared Euclidean distances, +inf where i >= j so that callers can mask by finiteness.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    n = x.shape[0]
    sq_norms = x.pow(2).sum(dim=1)  # (N,)
    for start in range(0, n - 1, batch_size):
        stop = min(start + batch_size, n)
        rows = torch.arange(start, stop, device=x.device)[:, None]  # (B, 1)
        cols = torch.arange(start, n, device=x.device)[None, :]  # (1, N - start)
        gram = x[start:stop] @ x[start:].T  # (B, N - start)
        sq_dist = (sq_norms[start:stop, None] + sq_norms[None, start:] - 2 * gram).clamp_min(0)
        yield rows, cols, sq_dist.masked_fill(cols <= rows, math.inf)


def alignment(x, y, alpha=2):
    """Mean distance between positive pairs, ``E ‖x_i − y_i‖^alpha`` (lower is tighter).

    Wang & Isola 2020, https://arxiv.org/abs/2005.10242. ``x`` and ``y`` are (N, D) embeddings
    of the two views of the same N samples.
    """
    x, y = _check_embeddings(x, "x"), _check_embeddings(y, "y")
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    return (x - y).norm(dim=1).pow(alpha).mean()


def uniformity(x, t=2, batch_size=4096):
    """Log mean Gaussian potential over pairs i < j, ``log E exp(−t ‖x_i − x_j‖²)``; lower is more uniform.

    Wang & Isola 2020, https://arxiv.org/abs/2005.10242. ``x`` is (N, D), N >= 2. Each row block
    is reduced with ``logsumexp``, so the result is exact without an N × N matrix or underflow.
    """
    x = _check_embeddings(x, "x")
    n = x.shape[0]
    if t <= 0:
        raise ValueError(f"t must be positive, got {t}")
    if n < 2:
        raise ValueError(f"x needs at least 2 rows to form a pair, got {n}")
    tiles = _upper_tiles(x, batch_size)
    block_lse = torch.stack([torch.logsumexp(-t * sq_dist.flatten(), dim=0) for *_, sq_dist in tiles])
    return torch.logsumexp(block_lse, dim=0) - math.log(n * (n - 1) / 2)


def class_distances(x, labels, batch_size=4096):
    """Mean Euclidean distance within and between classes, and their ratio.

    Returns ``{"intra_class", "inter_class", "separation_ratio"}`` as 0-dim tensors:
    ``intra_class`` averages over distinct same-class pairs, ``inter_class`` over different-class
    pairs, ``separation_ratio = inter_class / intra_class`` (higher separates classes better).
    ``x`` is (N, D), ``labels`` is (N,) and must contain at least one class with two samples and
    at least two classes.
    """
    x = _check_embeddings(x, "x")
    labels = torch.as_tensor(labels, device=x.device)
    if labels.shape != x.shape[:1]:
        raise ValueError(f"labels must have shape ({x.shape[0]},), got {tuple(labels.shape)}")
    sums = torch.zeros(2, dtype=torch.float64, device=x.device)  # (same, different)
    counts = torch.zeros(2, dtype=torch.float64, device=x.device)
    for rows, cols, sq_dist in _upper_tiles(x, batch_size):
        pair = sq_dist.isfinite()  # (B, N - start)
        same = labels[rows] == labels[cols]  # (B, N - start)
        dist = sq_dist.masked_fill(~pair, 0).sqrt().double()
        for k, mask in enumerate((pair & same, pair & ~same)):
            sums[k] += dist[mask].sum()
            counts[k] += mask.sum()
    if counts[0] == 0 or counts[1] == 0:
        raise ValueError("labels must contain a class with at least two samples and at least two classes")
    intra, inter = sums / counts
    return {"intra_class": intra, "inter_class": inter, "separation_ratio": inter / intra}


@torch.no_grad()
def representation_metrics(z1, z2, labels):
    """All representation metrics of a run as plain floats, for the results JSON.

    ``z1`` and ``z2`` are (N, D) embeddings of two augmented views of the same N test images
    (L2-normalised here); alignment uses the (z1, z2) pairs, uniformity and class distances use
    ``z1``. Returns ``{alignment, uniformity, intra_class, inter_class, separation_ratio}``.
    """
    z1 = F.normalize(_check_embeddings(z1, "z1").float(), dim=1)
    z2 = F.normalize(_check_embeddings(z2, "z2").float(), dim=1)
    metrics = {"alignment": alignment(z1, z2), "uniformity": uniformity(z1), **class_distances(z1, labels)}
    return {name: float(value) for name, value in metrics.items()}
