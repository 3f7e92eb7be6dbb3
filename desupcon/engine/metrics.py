"""Geometry of embeddings on the unit hypersphere.

Alignment and uniformity are the two properties of Wang & Isola, "Understanding Contrastive
Representation Learning through Alignment and Uniformity on the Hypersphere", ICML 2020
(https://arxiv.org/abs/2005.10242). Class distances measure how far apart classes sit on the
sphere relative to how tight each class is.

Pairwise quantities are computed block by block (a block of rows against all later rows), so
memory grows as ``rows × N`` and never as ``N × N``. Unless a caller fixes ``batch_size``, the rows
of a block come from the budget ``BLOCK_BYTES``: the block's tile of pairs and its temporaries
(reduced in place) take at most that many bytes, so the peak is the inputs plus about one
``BLOCK_BYTES`` (without gradients; autograd keeps every tile it needs for the backward pass).
Everything runs on the device of the input tensor.
"""

import functools
import math

import torch
import torch.nn.functional as F

BLOCK_BYTES = 64 * 2**20
"""Memory budget in bytes of one block of a pairwise computation (here and in ``desupcon.engine.evaluate``)."""


def rows_per_block(n_cols, bytes_per_entry, budget=None):
    """Rows of a ``(rows, n_cols)`` block whose entries, ``bytes_per_entry`` each (the tile and its
    temporaries), fit in ``budget`` bytes (default ``BLOCK_BYTES``); at least 1."""
    if n_cols < 1 or bytes_per_entry <= 0:
        raise ValueError(f"n_cols and bytes_per_entry must be positive, got {n_cols} and {bytes_per_entry}")
    budget = BLOCK_BYTES if budget is None else budget
    return max(1, int(budget // (n_cols * bytes_per_entry)))


def _check_embeddings(x, name):
    """Return ``x`` as a tensor after checking it is a non-empty (N, D) matrix."""
    if x is None:
        raise ValueError(f"{name} must be an (N, D) matrix, got None")
    x = torch.as_tensor(x)
    if x.dim() != 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty (N, D) matrix, got shape {tuple(x.shape)}")
    return x


def _sq_dist_tile(x, sq_norms, start, stop, fill):
    """Squared Euclidean distances (B, N - start) between rows ``start:stop`` and ``start:`` of ``x``,
    with ``fill`` where i >= j (the lower triangle of the leading B x B block): one fresh buffer
    and one (B, B) boolean mask. ``sq_norms`` (N,) are the squared row norms."""
    sq_dist = torch.addmm(sq_norms[None, start:], x[start:stop], x[start:].T, alpha=-2)  # ‖x_j‖² − 2 x_i·x_j
    sq_dist.add_(sq_norms[start:stop, None]).clamp_min_(0)
    lower = torch.ones(stop - start, stop - start, dtype=torch.bool, device=x.device).tril_()  # i >= j
    sq_dist[:, :stop - start].masked_fill_(lower, fill)
    return sq_dist


def _reduce_upper_tiles(x, batch_size, fill, reduce):
    """``[reduce(start, stop, sq_dist), ...]`` over the pairs i < j of ``x``, ``batch_size`` rows at a time.

    ``sq_dist`` is :func:`_sq_dist_tile`; ``reduce`` may overwrite it, and it is freed before the
    next block is built, so one block at a time is alive.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    n = x.shape[0]
    sq_norms = x.pow(2).sum(dim=1)  # (N,)
    blocks = [(start, min(start + batch_size, n)) for start in range(0, n - 1, batch_size)]
    return [reduce(start, stop, _sq_dist_tile(x, sq_norms, start, stop, fill)) for start, stop in blocks]


def _log_sum_exp_(values):
    """``log Σ exp(values)`` over all entries, shifted by their maximum (no underflow); overwrites ``values``."""
    shift = values.max().detach()
    return shift + values.sub_(shift).exp_().sum().log()


def _distance_sums_(labels, start, stop, sq_dist):
    """Sums of the pair distances of one tile, all pairs and same-class pairs (float64); overwrites ``sq_dist``."""
    dist = sq_dist.sqrt_()  # (B, N - start)
    all_pairs = dist.sum().double()
    return all_pairs, dist.masked_fill_(labels[start:stop, None] != labels[None, start:], 0).sum().double()


def alignment(x, y, alpha=2):
    """Mean distance between positive pairs, ``E ‖x_i − y_i‖^alpha`` (lower is tighter).

    Wang & Isola 2020, https://arxiv.org/abs/2005.10242. ``x`` and ``y`` are (N, D) embeddings
    of the two views of the same N samples.
    """
    x, y = _check_embeddings(x, "x"), _check_embeddings(y, "y")
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    return (x - y).norm(dim=1).pow(alpha).mean()


def uniformity(x, t=2, batch_size=None):
    """Log mean Gaussian potential over pairs i < j, ``log E exp(−t ‖x_i − x_j‖²)``; lower is more uniform.

    Wang & Isola 2020, https://arxiv.org/abs/2005.10242. ``x`` is (N, D), N >= 2. Each row block
    (``batch_size`` rows; default: as many as ``BLOCK_BYTES`` allows) is reduced in place with a
    max-shifted log-sum-exp, so the result is exact without an N × N matrix or underflow.
    """
    x = _check_embeddings(x, "x")
    n = x.shape[0]
    if t <= 0:
        raise ValueError(f"t must be positive, got {t}")
    if n < 2:
        raise ValueError(f"x needs at least 2 rows to form a pair, got {n}")
    if batch_size is None:
        batch_size = rows_per_block(n, x.element_size() + 1)  # the tile and its (B, B) mask
    block_lse = _reduce_upper_tiles(x, batch_size, math.inf, lambda start, stop, sq: _log_sum_exp_(sq.mul_(-t)))
    return torch.logsumexp(torch.stack(block_lse), dim=0) - math.log(n * (n - 1) / 2)


@torch.no_grad()
def class_distances(x, labels, batch_size=None):
    """Mean Euclidean distance within and between classes, and their ratio.

    Returns ``{"intra_class", "inter_class", "separation_ratio"}`` as 0-dim tensors:
    ``intra_class`` averages over distinct same-class pairs, ``inter_class`` over different-class
    pairs, ``separation_ratio = inter_class / intra_class`` (higher separates classes better).
    ``x`` is (N, D), ``labels`` is (N,) and must contain at least one class with two samples and
    at least two classes. Blocks have ``batch_size`` rows (default: as many as ``BLOCK_BYTES``
    allows) and are reduced in place, so the result carries no gradient; the pair counts come from
    the class sizes.
    """
    x = _check_embeddings(x, "x")
    labels = torch.as_tensor(labels, device=x.device)
    if labels.shape != x.shape[:1]:
        raise ValueError(f"labels must have shape ({x.shape[0]},), got {tuple(labels.shape)}")
    n = x.shape[0]
    class_sizes = torch.unique(labels, return_counts=True)[1].double()
    same_pairs = (class_sizes * (class_sizes - 1) / 2).sum()
    different_pairs = n * (n - 1) / 2 - same_pairs
    if same_pairs == 0 or different_pairs == 0:
        raise ValueError("labels must contain a class with at least two samples and at least two classes")
    if batch_size is None:
        batch_size = rows_per_block(n, x.element_size() + 2)  # the tile, its mask, class mask
    sums = _reduce_upper_tiles(x, batch_size, 0.0, functools.partial(_distance_sums_, labels))
    all_sum, same_sum = torch.stack([torch.stack(block) for block in sums]).sum(dim=0)
    intra, inter = same_sum / same_pairs, (all_sum - same_sum) / different_pairs
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
