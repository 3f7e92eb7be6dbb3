"""Stores of past embeddings that supply extra contrastive keys (docs/design.md#memory-bank-and-queue).

Both structures are ``nn.Module``s whose whole state lives in registered buffers: ``.to(device)``
moves them, and ``state_dict()`` saves them with the model, so a run resumed from a checkpoint
continues with exactly the same bank. They are plain local structures: under DDP, gather the
embeddings from all ranks before writing them.
"""

import torch
import torch.nn.functional as F

from desupcon.core.checks import require, require_in_range
from torch import nn


def _random_unit_rows(n, dim, seed, device):
    """(n, dim) random L2-normalised float32 rows, reproducible from ``seed`` on any device."""
    if n < 1 or dim < 1:
        raise ValueError(f"the number of rows and dim must be >= 1, got {n} and {dim}")
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, dim, generator=generator), dim=1).to(device)


def _check_shape(name, x, shape):
    """Raise ValueError unless ``x.shape`` matches ``shape`` (None matches any size)."""
    if x.dim() != len(shape) or any(s is not None and s != got for s, got in zip(shape, x.shape)):
        expected = ", ".join("*" if s is None else str(s) for s in shape)
        raise ValueError(f"{name} must have shape ({expected}), got {tuple(x.shape)}")


def _check_slots(name, indices, num_slots):
    """Check that ``indices`` is a 1-D integer tensor of slot ids in [0, num_slots)."""
    _check_shape(name, indices, (None,))
    require_in_range(name, indices, num_slots, what="slot ids")


class MomentumMemoryBank(nn.Module):
    """One slot per training image, holding a momentum-averaged embedding and the image's label.

    Memory bank of Wu et al. 2018 (https://arxiv.org/abs/1805.01978) as used by CRD
    (https://arxiv.org/abs/1910.10699). When image i is in the batch its slot is updated as

        feats[i] ← normalize(m · feats[i] + (1 − m) · new_i)

    (without ``normalize`` when ``renormalise`` is off: the write-ups' literal
    ``memory[i] = 0.5 × memory_old[i] + 0.5 × feature_new[i]``), and ``sample`` draws random slots,
    by default outside the batch, to serve as extra teacher keys.

    Args:
        num_entries: number of slots, one per training image (e.g. 50,000 for CIFAR-100).
        dim: embedding dimension.
        momentum: weight m ∈ [0, 1) kept from the old entry (default: 0.5; 0 overwrites).
        device: device of the buffers (default: None, the CPU).
        seed: seed of the random initialisation (default: 0).
        renormalise: L2-normalise each blended row (default: True; False is the write-ups' literal update).

    Buffers (saved by ``state_dict()``):
        feats: (num_entries, dim) float32, L2-normalised rows; random unit vectors at first.
        labels: (num_entries,) long, -1 until ``update`` gives the slot a label. Supervised
            losses need real labels, so label every slot you sample from (e.g. write
            ``bank.labels.copy_(train_targets)`` once) before passing sampled labels to them.
    """

    def __init__(self, num_entries, dim, momentum=0.5, device=None, seed=0, renormalise=True):
        super().__init__()
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must lie in [0, 1), got {momentum}")
        self.momentum, self.renormalise = momentum, renormalise
        self.register_buffer("feats", _random_unit_rows(num_entries, dim, seed, device))
        unknown = torch.full((num_entries,), -1, dtype=torch.long, device=device)
        self.register_buffer("labels", unknown)

    def extra_repr(self):
        num_entries, dim = self.feats.shape
        return f"num_entries={num_entries}, dim={dim}, momentum={self.momentum}, renormalise={self.renormalise}"

    @torch.no_grad()
    def update(self, indices, feats, labels=None):
        """Blend new embeddings into their slots (and renormalise them, unless ``renormalise`` is off).

        Args:
            indices: (B,) distinct slot ids (dataset indices of the batch).
            feats: (B, dim) new embeddings; they need not be normalised.
            labels: optional (B,) labels to store in the slots (default: None, keep the old ones).
        """
        num_entries, dim = self.feats.shape
        _check_slots("indices", indices, num_entries)
        _check_shape("feats", feats, (len(indices), dim))
        if labels is not None:
            _check_shape("labels", labels, (len(indices),))
        indices = indices.to(self.feats.device)
        old = self.feats[indices]  # (B, dim)
        new = feats.to(self.feats)  # (B, dim)
        blended = self.momentum * old + (1 - self.momentum) * new  # (B, dim)
        self.feats[indices] = F.normalize(blended, dim=1) if self.renormalise else blended
        if labels is not None:
            self.labels[indices] = labels.to(self.labels)

    @torch.no_grad()
    def sample(self, k, exclude=None, generator=None):
        """Draw ``k`` distinct slots uniformly at random, none of them in ``exclude``.

        Args:
            k: number of slots to draw.
            exclude: optional (B,) slot ids that must not be drawn, typically the batch's
                dataset indices (repeats are counted once).
            generator: optional ``torch.Generator`` for reproducible draws; the random scores
                are drawn on its device (default: None, the global RNG of the bank's device).

        Returns:
            ``(feats, labels, indices)``: copies of shape (k, dim), (k,) and (k,).
        """
        num_entries = self.feats.shape[0]
        device = self.feats.device if generator is None else generator.device
        scores = torch.rand(num_entries, generator=generator, device=device)  # (num_entries,)
        scores = scores.to(self.feats.device)
        if exclude is not None:
            _check_slots("exclude", exclude, num_entries)
            scores[exclude.to(scores.device)] = float("inf")
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        num_free = torch.isfinite(scores).sum()
        require(num_free >= k, f"k={k} exceeds the free slots (the {num_entries} slots minus the excluded ones)")
        indices = scores.topk(k, largest=False).indices  # (k,)
        return self.feats[indices], self.labels[indices], indices


def _check_divisible(size, batch):
    if batch < 1:
        raise ValueError(f"the batch size must be >= 1, got {batch}")
    if size % batch:
        multiple = -(-size // batch) * batch
        raise ValueError(
            f"FIFOQueue size {size} is not divisible by the batch size {batch}: choose a size "
            f"that is a multiple of {batch} (e.g. {multiple})"
        )


class FIFOQueue(nn.Module):
    """Ring buffer of keys and their labels, the negative queue of MoCo.

    He et al., "Momentum Contrast for Unsupervised Visual Representation Learning", CVPR 2020,
    https://arxiv.org/abs/1911.05722. Each ``enqueue`` overwrites the oldest batch of keys. The
    size must be a multiple of the batch size, so a batch never straddles the end.

    Args:
        size: number of keys K held.
        dim: key dimension.
        batch_size: optional batch size, checked against ``size`` now rather than at the first
            ``enqueue`` (default: None).
        device: device of the buffers (default: None, the CPU).
        seed: seed of the random initialisation (default: 0).

    Buffers (saved by ``state_dict()``):
        keys: (size, dim) float32, L2-normalised rows; random unit vectors at first.
        labels: (size,) long, -1 for keys enqueued without labels (and at first).
        ptr: (1,) long, the row the next batch is written to.
    """

    def __init__(self, size, dim, batch_size=None, device=None, seed=0):
        super().__init__()
        if batch_size is not None:
            _check_divisible(size, batch_size)
        self.register_buffer("keys", _random_unit_rows(size, dim, seed, device))
        self.register_buffer("labels", torch.full((size,), -1, dtype=torch.long, device=device))
        self.register_buffer("ptr", torch.zeros(1, dtype=torch.long, device=device))

    def extra_repr(self):
        size, dim = self.keys.shape
        return f"size={size}, dim={dim}"

    @torch.no_grad()
    def enqueue(self, keys, labels=None):
        """Write a batch of keys over the oldest ones and advance the pointer.

        Args:
            keys: (B, dim) keys, with ``size % B == 0``; under DDP, the keys of all ranks.
            labels: optional (B,) labels of the keys (default: None, stored as -1).
        """
        size, dim = self.keys.shape
        _check_shape("keys", keys, (None, dim))
        batch = keys.shape[0]
        _check_divisible(size, batch)
        if labels is None:
            labels = torch.full((batch,), -1, dtype=torch.long)
        _check_shape("labels", labels, (batch,))
        rows = self.ptr + torch.arange(batch, device=self.ptr.device)  # (B,)
        self.keys.index_copy_(0, rows, keys.to(self.keys))
        self.labels.index_copy_(0, rows, labels.to(self.labels))
        self.ptr.add_(batch).remainder_(size)
