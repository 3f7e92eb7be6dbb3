"""Evaluation on frozen networks, one schema for every run kind.

``evaluate_encoder`` gives the same keys for a teacher, a student and a MoCo-v3 encoder: linear
probe (``probe_top1``, ``probe_top5``, ``probe_train_top1``), weighted k-NN (``knn_top1``,
``knn_top5``), ``train_acc`` and ``gap``, alignment, uniformity and class distances on two augmented
views of the test set, and ``head_top1``/``head_top5`` where the network has a classifier.
``test_acc`` is the number a run reports: the linear probe, or the classifier for the teacher and
its projection run. All computations stay on the device of the features; only the final numbers
are read back.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .augment import PRESETS, augment, normalize


@torch.no_grad()
def embed(model: nn.Module, images: torch.Tensor, mean, std, batch_size: int = 1024, transform=None,
          size: int | None = None):
    """Run ``model`` (eval mode) over uint8 ``images``; returns its outputs concatenated in float32.

    ``transform(uint8_batch) -> float_batch`` replaces plain normalisation (e.g. an augmentation);
    ``size`` resizes normalised images to ``size x size`` first (a backbone trained at another
    resolution). For a ``ModelWrapper`` the result is ``(features (N, F), projections (N, P),
    logits (N, C))``.
    """
    if transform is None:
        def transform(batch):
            x = normalize(batch, mean, std)  # (B, C, H, W)
            if size is None or x.shape[-1] == size:
                return x
            return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)

    was_training = model.training
    model.eval()
    outputs = []
    for start in range(0, images.shape[0], batch_size):
        batch = images[start:start + batch_size]
        x = transform(batch)
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


def evaluate_encoder(encoder: nn.Module, data, settings, seed: int, image_size: int | None = None,
                     reports_head: bool = False, head_train_acc: float | None = None, where: str = "evaluation") -> dict:
    """The evaluation schema of a frozen ``encoder`` (``x -> (features, projections[, logits])``).

    Args:
        encoder: the network; its projections are the contrastive space the metrics measure.
        data: ``desupcon.data.Data`` (labelled train and test splits).
        settings: ``desupcon.config.EvalConfig`` (k-NN neighbours and temperature, probe epochs).
        seed: RNG seed of the probe and of the two augmented test views.
        image_size: the side the encoder was trained at (default: the dataset's own).
        reports_head: ``test_acc`` is the classifier's accuracy (teacher, projection head), else the probe's.
        head_train_acc: the classifier's train accuracy, ``train_acc`` when ``reports_head``.
        where: what is evaluated, for the message of ``DivergenceError`` when features are not finite.
    """
    from .checks import require_finite
    from .metrics import representation_metrics, uniformity

    train, test = data.train, data.test
    f_tr = embed(encoder, train.images, train.mean, train.std, size=image_size)[0]
    f_te, z_te, *logits_te = embed(encoder, test.images, test.mean, test.std, size=image_size)
    for name, values in (("the train features", f_tr), ("the test features", f_te), ("the test projections", z_te)):
        require_finite(name, values, where)
    probe = linear_probe(f_tr, train.labels, f_te, test.labels, test.num_classes, epochs=settings.probe_epochs,
                         seed=seed)
    knn = knn_accuracy(f_tr, train.labels, f_te, test.labels, test.num_classes, k=settings.knn_k,
                       temperature=settings.knn_temperature)
    head = dict(zip(("head_top1", "head_top5"), topk_accuracy(logits_te[0], test.labels))) if logits_te else {}
    gen = torch.Generator(device=test.images.device).manual_seed(seed)
    view = lambda c: lambda batch: augment(batch, c, test.mean, test.std, gen, image_size)
    z1, z2 = (embed(encoder, test.images, test.mean, test.std, transform=view(c))[1] for c in PRESETS["supcon"])
    reported = head["head_top1"] if reports_head else probe["top1"]
    train_acc = head_train_acc if reports_head else probe["train_top1"]
    return {"test_acc": reported, "train_acc": train_acc, "gap": train_acc - reported,
            "probe_top1": probe["top1"], "probe_top5": probe["top5"], "probe_train_top1": probe["train_top1"],
            "knn_top1": knn["top1"], "knn_top5": knn["top5"], **head,
            **representation_metrics(z1, z2, test.labels), "uniformity_clean": uniformity(z_te).item()}


def evaluate_run(cfg, encoder: nn.Module, data, history: list, run_name: str) -> dict:
    """``evaluate_encoder`` of a finished run, with its training time (``train_seconds``)."""
    reports_head = cfg.role in ("teacher", "projection")
    results = evaluate_encoder(encoder, data, cfg.evaluation, cfg.seed, image_size=cfg.image_size,
                               reports_head=reports_head, head_train_acc=history[-1].get("train_acc"),
                               where=f"{run_name}: evaluation after epoch {len(history)}")
    return {**results, "train_seconds": sum(h["seconds"] for h in history)}
