"""Evaluation on frozen networks: embeddings, linear probe (top-1/top-5) and weighted k-NN.

All computations stay on the device of the features; only the final numbers are read back.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .augment import normalize


@torch.no_grad()
def embed(model: nn.Module, images: torch.Tensor, mean, std, batch_size: int = 1024, transform=None):
    """Run ``model`` (eval mode) over uint8 ``images``; returns its outputs concatenated in float32.

    ``transform(uint8_batch) -> float_batch`` replaces plain normalisation (e.g. an augmentation).
    For a ``ModelWrapper`` the result is ``(features (N, F), projections (N, P), logits (N, C))``.
    """
    was_training = model.training
    model.eval()
    outputs = []
    for start in range(0, images.shape[0], batch_size):
        batch = images[start:start + batch_size]
        x = transform(batch) if transform else normalize(batch, mean, std)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=x.device.type == "cuda"):
            out = model(x)
        outputs.append(tuple(o.float() for o in out) if isinstance(out, tuple) else (out.float(),))
    model.train(was_training)
    return tuple(torch.cat(parts) for parts in zip(*outputs))


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> tuple[float, ...]:
    """Percent of rows whose label is among the top-k logits, for each k (k capped at the classes)."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices  # (N, kmax)
    hits = top == labels[:, None]
    return tuple(100.0 * hits[:, :k].any(dim=1).float().mean().item() for k in ks)


def linear_probe(train_feats, train_labels, test_feats, test_labels, num_classes: int, epochs: int = 50,
                 batch_size: int = 256, lr: float = 1e-3, seed: int = 0) -> dict:
    """Train a linear classifier on frozen, standardised features (Adam, cosine schedule).

    Returns ``{"top1", "top5"}`` on the test features and ``"train_top1"`` on the train features
    (the generalisation gap is ``train_top1 - top1``).
    """
    if train_feats.ndim != 2 or train_feats.shape[1] != test_feats.shape[1]:
        raise ValueError(f"features must be (N, D) with the same D, got {tuple(train_feats.shape)} and "
                         f"{tuple(test_feats.shape)}")
    device = train_feats.device
    mu, sigma = train_feats.mean(0), train_feats.std(0) + 1e-6
    xtr, xte = (train_feats - mu) / sigma, (test_feats - mu) / sigma
    gen = torch.Generator(device=device).manual_seed(seed)
    torch.manual_seed(seed)
    probe = nn.Linear(xtr.shape[1], num_classes).to(device)
    n, batch_size = xtr.shape[0], min(batch_size, xtr.shape[0])
    steps = epochs * (n // batch_size)
    opt = torch.optim.Adam(probe.parameters(), lr=lr, weight_decay=1e-5)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen, device=device)
        for start in range(0, n - batch_size + 1, batch_size):
            idx = order[start:start + batch_size]
            loss = F.cross_entropy(probe(xtr[idx]), train_labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        top1, top5 = topk_accuracy(probe(xte), test_labels)
        train_top1, = topk_accuracy(probe(xtr), train_labels, ks=(1,))
    return {"top1": top1, "top5": top5, "train_top1": train_top1}


@torch.no_grad()
def knn_accuracy(train_feats, train_labels, test_feats, test_labels, num_classes: int, k: int = 200,
                 temperature: float = 0.1, batch_size: int = 1024) -> dict:
    """Weighted k-NN on cosine similarity (Wu et al. 2018, as in MoCo/DINO evaluations).

    Each of the ``k`` nearest train features votes for its label with weight ``exp(sim / T)``.
    Returns ``{"top1", "top5"}`` in percent.
    """
    k = min(k, train_feats.shape[0])
    train = F.normalize(train_feats, dim=1)
    one_hot = F.one_hot(train_labels, num_classes).float()  # (Ntr, C)
    scores = []
    for start in range(0, test_feats.shape[0], batch_size):
        sim = F.normalize(test_feats[start:start + batch_size], dim=1) @ train.T  # (B, Ntr)
        top_sim, top_idx = sim.topk(k, dim=1)  # (B, k)
        weights = (top_sim / temperature).exp()
        scores.append(torch.einsum("bk,bkc->bc", weights, one_hot[top_idx]))
    top1, top5 = topk_accuracy(torch.cat(scores), test_labels)
    return {"top1": top1, "top5": top5}
