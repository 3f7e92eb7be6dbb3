"""Evaluation on frozen networks, one schema for every run kind.

``evaluate_encoder`` gives the same keys for a teacher, a student and a MoCo-v3 encoder: linear
probe (``probe_top1``, ``probe_top5``, ``probe_train_top1``), weighted k-NN (``knn_top1``,
``knn_top5``), ``train_acc`` and ``gap``, alignment, uniformity and class distances on two augmented
views of the test set, and where the network has a classifier ``head_top1``/``head_top5`` with its
train accuracy on the clean train images (``head_train_top1``) and ``head_gap``.
``test_acc`` is the number a run reports: the linear probe, or the classifier for the teacher and
its projection run. All computations stay on the device of the features; only the final numbers
are read back. The linear probe is scikit-learn's L2-penalised logistic regression fitted to
convergence by L-BFGS; the probe and the k-NN go through the features in row blocks within
``desupcon.engine.metrics.BLOCK_BYTES``, so CIFAR-size features (50,000 x 512 train, 10,000 test) need no
(N, M) matrix (``benchmarks/bench_eval.py``).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from dataclasses import dataclass

from desupcon.core.checks import require_finite
from desupcon.core.config import Config, checked
from desupcon.images.augment import PRESETS, augment, normalize
from desupcon.engine.metrics import representation_metrics, rows_per_block, uniformity


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
    device = next((p.device for p in model.parameters()), images.device)  # a streamed split is on the host
    for start in range(0, images.shape[0], batch_size):
        batch = images[start:start + batch_size].to(device)
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


PROBE_TOLERANCE = 1e-5
"""The linear probe has converged once no entry of its objective's gradient exceeds this (scikit-learn's
``LogisticRegression`` stops at 1e-4 on the same, per-sample objective)."""


def _standardiser(feats):
    """Mean (D,) and scale (D,) of (N, D) ``feats`` as scikit-learn's ``StandardScaler`` takes them:
    population standard deviation, 1 for a constant feature."""
    sigma, mu = torch.std_mean(feats, dim=0, correction=0)
    return mu, torch.where(sigma > 1e-6 * (1 + mu.abs()), sigma, torch.ones_like(sigma))


def _row_blocks(n, rows):
    """``(start, stop)`` of consecutive blocks of at most ``rows`` of ``n`` rows."""
    return [(start, min(start + rows, n)) for start in range(0, n, rows)]


def _probe_accuracy(feats, labels, mu, sigma, weight, bias, ks, rows):
    """Top-k accuracies (percent) of the probe ``(weight (C, D), bias (C,))`` on (N, D) ``feats``,
    ``rows`` at a time."""
    hits = [0.0] * len(ks)
    for start, stop in _row_blocks(feats.shape[0], rows):
        logits = F.linear((feats[start:stop] - mu) / sigma, weight, bias)  # (B, C)
        for i, accuracy in enumerate(topk_accuracy(logits, labels[start:stop], ks)):
            hits[i] += accuracy * (stop - start)
    return tuple(h / feats.shape[0] for h in hits)


def linear_probe(train_feats, train_labels, test_feats, test_labels, num_classes: int,
                 max_iterations: int = 100, c: float = 1.0) -> dict:
    """Multinomial logistic regression on frozen, standardised features, fitted until it converges.

    Features are standardised with the train split's mean and population standard deviation
    (``_standardiser``). The objective is the mean cross-entropy plus ``‖W‖² / (2 c N)`` on the
    weights (not the bias): scikit-learn's ``LogisticRegression(C=c)`` objective ``½‖W‖² + c Σ CE``
    divided by ``c N``, so ``c=1`` is its default penalty. Optimiser: full-batch L-BFGS
    (``torch.optim.LBFGS``, strong-Wolfe line search, history 20, Nocedal & Wright 2006, ch. 7) from
    zero weights. Stopping: after ``max_iterations`` iterations (each about one pass over the train features,
    more where the line search needs extra evaluations), or earlier once every gradient entry is at
    most ``PROBE_TOLERANCE`` or the objective stops changing. Deterministic: nothing is sampled. The objective and
    its gradient are summed over row blocks standardised on the fly, each within
    ``desupcon.engine.metrics.BLOCK_BYTES``, so beyond the features the memory is one block and the L-BFGS
    history (40 copies of W). Runs on the features' device.

    Args:
        train_feats, test_feats: (N, D) and (M, D) frozen features.
        train_labels, test_labels: (N,) and (M,) class indices in ``[0, num_classes)``.
        max_iterations: the most L-BFGS iterations (``EvalConfig.probe_iterations``).
        c: inverse strength of the L2 penalty, as scikit-learn's ``C``.
    Returns ``{"top1", "top5"}`` in percent on the test features and ``"train_top1"`` on the train
    features (the generalisation gap is ``train_top1 - top1``).
    """
    for name, feats, labels, labels_name in (("train_feats", train_feats, train_labels, "train_labels"),
                                             ("test_feats", test_feats, test_labels, "test_labels")):
        if feats.ndim != 2 or feats.shape[1] != train_feats.shape[-1] or feats.shape[0] == 0:
            raise ValueError(f"{name} must be a non-empty (N, D) matrix with the D of train_feats, got "
                             f"{tuple(feats.shape)} (train_feats: {tuple(train_feats.shape)})")
        if labels.shape != feats.shape[:1]:
            raise ValueError(f"{labels_name} must have shape ({feats.shape[0]},), got {tuple(labels.shape)}")
    if max_iterations < 1 or c <= 0:
        raise ValueError(f"max_iterations must be >= 1 and c positive, got max_iterations={max_iterations} and c={c}")
    (n, dim), device = train_feats.shape, train_feats.device
    mu, sigma = _standardiser(train_feats)
    weight = torch.zeros(num_classes, dim, device=device, requires_grad=True)
    bias = torch.zeros(num_classes, device=device, requires_grad=True)
    # per row: the standardised features, the logits, their log-softmax and its gradient
    rows = rows_per_block(dim + 3 * num_classes, train_feats.element_size())
    blocks = _row_blocks(n, rows)
    opt = torch.optim.LBFGS([weight, bias], lr=1, max_iter=max_iterations, history_size=20,
                            tolerance_grad=PROBE_TOLERANCE, line_search_fn="strong_wolfe")

    def objective():
        opt.zero_grad(set_to_none=True)
        penalty = weight.pow(2).sum() / (2 * c * n)
        penalty.backward()
        total = penalty.detach()
        for start, stop in blocks:
            logits = F.linear((train_feats[start:stop] - mu) / sigma, weight, bias)  # (B, C)
            loss = F.cross_entropy(logits, train_labels[start:stop], reduction="sum") / n
            loss.backward()
            total = total + loss.detach()
        return total

    opt.step(objective)
    with torch.no_grad():
        top1, top5 = _probe_accuracy(test_feats, test_labels, mu, sigma, weight, bias, (1, 5), rows)
        train_top1, = _probe_accuracy(train_feats, train_labels, mu, sigma, weight, bias, (1,), rows)
    return {"top1": top1, "top5": top5, "train_top1": train_top1}


@torch.no_grad()
def knn_accuracy(train_feats, train_labels, test_feats, test_labels, num_classes: int, k: int = 200,
                 temperature: float = 0.1, batch_size: int | None = None) -> dict:
    """Weighted k-NN on cosine similarity (Wu et al. 2018, https://arxiv.org/abs/1805.01978, as in
    MoCo/DINO evaluations).

    Each of the ``k`` nearest train features votes for its label with weight ``exp(sim / T)``. Test
    features go ``batch_size`` at a time (default: as many as fit their (B, N_train) similarities in
    ``desupcon.engine.metrics.BLOCK_BYTES``), so memory holds one block of similarities, never the
    (M, N_train) matrix.
    ``train_feats`` (N, D), ``train_labels`` (N,), ``test_feats`` (M, D), ``test_labels`` (M,).
    Returns ``{"top1", "top5"}`` in percent.
    """
    if train_feats.ndim != 2 or test_feats.ndim != 2 or train_feats.shape[1] != test_feats.shape[1]:
        raise ValueError(f"train_feats and test_feats must be (N, D) matrices with the same D, got "
                         f"{tuple(train_feats.shape)} and {tuple(test_feats.shape)}")
    if train_labels.shape != train_feats.shape[:1] or test_labels.shape != test_feats.shape[:1]:
        raise ValueError(f"train_labels and test_labels must have shapes ({train_feats.shape[0]},) and "
                         f"({test_feats.shape[0]},), got {tuple(train_labels.shape)} and {tuple(test_labels.shape)}")
    k = min(k, train_feats.shape[0])
    if batch_size is None:
        batch_size = rows_per_block(train_feats.shape[0], train_feats.element_size())
    train_norms = train_feats.norm(dim=1).clamp_min(1e-12)  # (N,), F.normalize's floor
    scores = []
    for start, stop in _row_blocks(test_feats.shape[0], batch_size):
        sim = (F.normalize(test_feats[start:stop], dim=1) @ train_feats.T).div_(train_norms)  # (B, N) cosine
        top_sim, top_idx = sim.topk(k, dim=1)  # (B, k)
        votes = top_sim.div_(temperature).exp_()
        scores.append(votes.new_zeros(stop - start, num_classes).scatter_add_(1, train_labels[top_idx], votes))
    top1, top5 = topk_accuracy(torch.cat(scores), test_labels)
    return {"top1": top1, "top5": top5}


def evaluate_encoder(encoder: nn.Module, data, settings, seed: int, image_size: int | None = None,
                     reports_head: bool = False, head_train_acc: float | None = None, where: str = "evaluation",
                     trained_head: bool = True) -> dict:
    """The evaluation schema of a frozen ``encoder`` (``x -> (features, projections[, logits])``).

    Args:
        encoder: the network; its projections are the contrastive space the metrics measure.
        data: ``desupcon.images.datasets.Data`` (labelled train and test splits).
        settings: ``EvalConfig`` (k-NN neighbours and temperature, probe iterations).
        seed: RNG seed of the two augmented test views.
        image_size: the side the encoder was trained at (default: the dataset's own).
        reports_head: ``test_acc`` is the classifier's accuracy (teacher, projection head), else the probe's.
        head_train_acc: the classifier's train accuracy, ``train_acc`` when ``reports_head``.
        where: what is evaluated, for the message of ``DivergenceError`` when features are not finite.
        trained_head: the projection head was trained, so alignment, uniformity and class distances are
            measured in its space (``metric_space`` "projection"); a cross-entropy-only run's head is
            random, so they are measured on its L2-normalised backbone features ("features").
    """

    train, test = data.train, data.test
    f_tr, _, *logits_tr = embed(encoder, train.images, train.mean, train.std, size=image_size)
    f_te, z_te, *logits_te = embed(encoder, test.images, test.mean, test.std, size=image_size)
    for name, values in (("the train features", f_tr), ("the test features", f_te), ("the test projections", z_te)):
        require_finite(name, values, where)
    probe = linear_probe(f_tr, train.labels, f_te, test.labels, test.num_classes,
                         max_iterations=settings.probe_iterations)
    knn = knn_accuracy(f_tr, train.labels, f_te, test.labels, test.num_classes, k=settings.knn_k,
                       temperature=settings.knn_temperature)
    head = {}
    if logits_te:  # the classifier trained alongside: test top-1/top-5, train top-1 on clean images, their gap
        head = dict(zip(("head_top1", "head_top5"), topk_accuracy(logits_te[0], test.labels)))
        head["head_train_top1"] = topk_accuracy(logits_tr[0], train.labels, ks=(1,))[0]
        head["head_gap"] = head["head_train_top1"] - head["head_top1"]
    gen = torch.Generator(device=test.images.device).manual_seed(seed)
    view = lambda c: lambda batch: augment(batch, c, test.mean, test.std, gen, image_size)
    space = 1 if trained_head else 0  # index of the embedding in the encoder's outputs
    z1, z2 = (embed(encoder, test.images, test.mean, test.std, transform=view(c))[space] for c in PRESETS["supcon"])
    reported = head["head_top1"] if reports_head else probe["top1"]
    train_acc = head_train_acc if reports_head else probe["train_top1"]
    return {"test_acc": reported, "train_acc": train_acc, "gap": train_acc - reported,
            "probe_top1": probe["top1"], "probe_top5": probe["top5"], "probe_train_top1": probe["train_top1"],
            "knn_top1": knn["top1"], "knn_top5": knn["top5"], **head,
            **representation_metrics(z1, z2, test.labels),
            "uniformity_clean": uniformity(F.normalize(z_te if trained_head else f_te, dim=1)).item(),
            "metric_space": "projection" if trained_head else "features"}


def evaluate_run(cfg, encoder: nn.Module, data, history: list, run_name: str) -> dict:
    """``evaluate_encoder`` of a finished run, with its training time (``train_seconds``); the config
    says which accuracy it reports (``TaskConfig.reports_head``) and where its geometry lives
    (``TaskConfig.head_is_trained``)."""
    results = evaluate_encoder(encoder, data, cfg.evaluation, cfg.seed, image_size=cfg.image_size,
                               reports_head=cfg.reports_head, head_train_acc=history[-1].get("train_acc"),
                               where=f"{run_name}: evaluation after epoch {len(history)}",
                               trained_head=cfg.head_is_trained)
    return {**results, "train_seconds": sum(h["seconds"] for h in history)}


@dataclass(frozen=True)
class EvalConfig(Config):
    """Section ``eval``: the frozen-feature evaluation every run ends with (and MoCo-v3's ``evaluate-checkpoints``).

    knn_k, knn_temperature: neighbours and temperature of the weighted cosine k-NN (200, 0.1).
    probe_iterations: the most L-BFGS iterations of the linear probe on frozen features (full batch, each about
        one pass over the train features; it stops earlier once converged, see ``evaluate.linear_probe``).
    """

    knn_k: int = checked(200, ">= 1", lambda v: v >= 1)
    knn_temperature: float = checked(0.1, "in (0, 10]", lambda v: 0 < v <= 10)
    probe_iterations: int = checked(100, ">= 1", lambda v: v >= 1)
