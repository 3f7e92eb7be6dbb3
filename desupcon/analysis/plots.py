"""Figures for one run or a whole study: t-SNE, 3D hypersphere, alignment/uniformity, curves.

Every function takes numpy arrays or tensors, writes one file to ``path`` (parent folders are
created) and returns that path. Static figures are PNGs drawn on ``matplotlib.figure.Figure``
objects, never through pyplot, so they work headless and leave no open figures behind.

The analysis follows Wang & Isola, "Understanding Contrastive Representation Learning through
Alignment and Uniformity on the Hypersphere", ICML 2020 (https://arxiv.org/abs/2005.10242);
t-SNE is van der Maaten & Hinton 2008 (https://jmlr.org/papers/v9/vandermaaten08a.html).
"""

import re
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import torch
from matplotlib import colormaps
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from plotly.subplots import make_subplots
from sklearn.manifold import TSNE

from desupcon.analysis.stats import difference_interval, mean_interval
from desupcon.engine.metrics import alignment, uniformity


def _np(x):
    """A numpy view of a tensor (detached, on CPU) or of any array-like."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _embeddings_and_labels(embeddings, labels, name="embeddings"):
    """Check and return ``(x (N, D) float64, labels (N,) int)``."""
    x, labels = _np(embeddings).astype(np.float64), _np(labels).astype(np.int64)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"{name} must be a non-empty (N, D) array, got shape {x.shape}")
    if labels.shape != (len(x),):
        raise ValueError(f"labels must have shape ({len(x)},), got {labels.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} hold {int((~np.isfinite(x)).sum())} NaN or infinite values: a diverged network "
                         f"is not plotted (t-SNE would crash on them)")
    return x, labels


def _normalise(x):
    """Rows of ``x`` scaled to unit L2 norm."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _subsample(n, max_points, rng):
    """Sorted indices of at most ``max_points`` of ``n`` items, drawn without replacement."""
    return np.sort(rng.choice(n, size=max_points, replace=False)) if n > max_points else np.arange(n)


def _palette(num_colours):
    """Hex colours: tab20 (qualitative) up to 20 classes, else evenly sampled from turbo."""
    if num_colours <= 20:
        return [to_hex(c) for c in colormaps["tab20"].colors[:num_colours]]
    return [to_hex(c) for c in colormaps["turbo"](np.linspace(0, 1, num_colours))]


def _output_path(path):
    """``path`` as a Path whose parent folder exists."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _save(fig, path):
    """Write a matplotlib figure as PNG and return its path."""
    path = _output_path(path)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    return path


def plot_tsne(embeddings, labels, path, num_classes=20, max_points=2000, seed=0, title=None):
    """2D t-SNE of ``num_classes`` classes drawn with ``seed`` (all of them if there are no more), at most
    ``max_points`` points."""
    x, labels = _embeddings_and_labels(embeddings, labels)
    rng = np.random.default_rng(seed)
    present = np.unique(labels)
    classes = present if len(present) <= num_classes else np.sort(rng.choice(present, num_classes, replace=False))
    keep = np.flatnonzero(np.isin(labels, classes))  # (M,)
    keep = keep[_subsample(len(keep), max_points, rng)]
    if len(keep) < 5:
        raise ValueError(f"t-SNE needs at least 5 points from the selected classes, got {len(keep)}")
    tsne = TSNE(n_components=2, init="pca", perplexity=min(30.0, len(keep) / 4), random_state=seed)
    xy = tsne.fit_transform(x[keep])  # (M, 2)
    fig = Figure(figsize=(9, 7))
    ax = fig.subplots()
    for c, colour in zip(classes, _palette(len(classes))):
        mask = labels[keep] == c
        ax.scatter(xy[mask, 0], xy[mask, 1], s=6, color=colour, label=str(c))
    ax.legend(title="class", loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, markerscale=2)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or f"t-SNE of {len(classes)} classes ({len(keep)} points)")
    return _save(fig, path)


def _project_to_sphere(x):
    """PCA of (N, D) embeddings to 3 components, each row then put on the unit sphere: (N, 3)."""
    if x.shape[1] < 3:
        raise ValueError(f"embeddings need at least 3 dimensions for a 3D projection, got {x.shape[1]}")
    centred = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return _normalise(centred @ vt[:3].T)


def _sphere_trace(num_circles=12, resolution=73):
    """A faint unit-sphere wireframe (meridians and parallels) as one line trace, circles split by NaN."""
    t = np.linspace(0, 2 * np.pi, resolution)  # (R,)
    meridians = [
        np.stack([np.cos(t) * np.cos(lon), np.cos(t) * np.sin(lon), np.sin(t)], axis=1)
        for lon in np.linspace(0, np.pi, num_circles // 2, endpoint=False)
    ]
    parallels = [
        np.stack([np.cos(lat) * np.cos(t), np.cos(lat) * np.sin(t), np.full_like(t, np.sin(lat))], axis=1)
        for lat in np.linspace(-np.pi / 2, np.pi / 2, num_circles // 2 + 1)[1:-1]
    ]
    gap = np.full((1, 3), np.nan)
    xyz = np.concatenate([part for circle in meridians + parallels for part in (circle, gap)])  # (M, 3)
    xyz = xyz.astype(np.float32).round(3)
    return go.Scatter3d(
        x=xyz[:, 0],
        y=xyz[:, 1],
        z=xyz[:, 2],
        mode="lines",
        line={"color": "#bbbbbb", "width": 1},
        connectgaps=False,
        hoverinfo="skip",
        showlegend=False,
        name="unit sphere",
    )


def _hypersphere_figure(
    embeddings, labels, num_random_classes=10, max_points=3000, seed=0, title=None, class_names=None
):
    """The plotly figure of :func:`plot_hypersphere`: per panel, a sphere trace and one trace per class."""
    x, labels = _embeddings_and_labels(embeddings, labels)
    rng = np.random.default_rng(seed)
    keep = _subsample(len(x), max_points, rng)
    points = _project_to_sphere(x[keep]).astype(np.float32).round(4)  # (M, 3)
    labels = labels[keep]
    classes = np.unique(labels)
    subset = np.sort(rng.choice(classes, size=min(num_random_classes, len(classes)), replace=False))
    colours = dict(zip(classes, _palette(len(classes))))
    fig = make_subplots(
        rows=1,
        cols=2,
        specs=[[{"type": "scene"}, {"type": "scene"}]],
        subplot_titles=("All classes", f"{len(subset)} random classes"),
        horizontal_spacing=0.02,
    )
    for col, panel_classes in ((1, classes), (2, subset)):
        fig.add_trace(_sphere_trace(), row=1, col=col)
        for c in panel_classes:
            name = str(c) if class_names is None else str(class_names[c])
            xyz = points[labels == c]
            fig.add_trace(
                go.Scatter3d(
                    x=xyz[:, 0],
                    y=xyz[:, 1],
                    z=xyz[:, 2],
                    mode="markers",
                    marker={"size": 2.5, "color": colours[c]},
                    name=name,
                    legendgroup=str(c),
                    showlegend=col == 1,
                    hovertemplate=f"{name}<extra></extra>",
                ),
                row=1,
                col=col,
            )
    axis = {"range": [-1.1, 1.1], "showbackground": False, "showticklabels": False}
    fig.update_scenes(
        xaxis={**axis, "title": "PC1"},
        yaxis={**axis, "title": "PC2"},
        zaxis={**axis, "title": "PC3"},
        aspectmode="cube",
    )
    fig.update_layout(
        title=title or f"Unit-sphere embeddings (PCA to 3D): {len(points)} points, {len(classes)} classes",
        height=650,
        margin={"l": 0, "r": 0, "t": 80, "b": 0},
        legend={"title": {"text": "class (click to toggle)"}, "itemsizing": "constant", "tracegroupgap": 0},
    )
    return fig


def plot_hypersphere(
    embeddings, labels, path, num_random_classes=10, max_points=3000, seed=0, title=None, class_names=None
):
    """Interactive, offline 3D view of the embeddings on the unit sphere (HTML).

    Two panels, all classes and ``num_random_classes`` classes drawn with ``seed``; a legend
    click toggles a class in both. plotly.js is written once per folder as ``plotly.min.js``
    beside the HTML (no CDN), so every hypersphere file in ``plots/`` shares one copy.
    ``class_names`` maps class id to a display name.
    """
    path = _output_path(path)
    fig = _hypersphere_figure(embeddings, labels, num_random_classes, max_points, seed, title, class_names)
    fig.write_html(path, include_plotlyjs="directory", full_html=True, div_id=re.sub(r"\W", "_", path.stem))
    return path


def _angles_degrees(a, b):
    """Angles in degrees between matching rows of two (N, D) arrays: (N,)."""
    cosine = (_normalise(a) * _normalise(b)).sum(axis=1)
    return np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0)))


def plot_alignment(z1, z2, labels, path, title=None, seed=0, max_per_class=200):
    """Alignment/uniformity analysis of two views (PNG, three panels).

    Left: histogram of positive-pair distances ``‖z1 − z2‖``. Middle: density of the angle
    between positive pairs and between random pairs. Right: within-class angles of ``z1`` for up
    to 20 classes (at most ``max_per_class`` points each). The title carries alignment and
    uniformity from :mod:`desupcon.engine.metrics`.
    """
    x1, labels = _embeddings_and_labels(z1, labels, "z1")
    x2, _ = _embeddings_and_labels(z2, labels, "z2")
    if x1.shape != x2.shape:
        raise ValueError(f"z1 and z2 must have the same shape, got {x1.shape} and {x2.shape}")
    x1, x2 = _normalise(x1), _normalise(x2)
    rng = np.random.default_rng(seed)
    align = float(alignment(torch.from_numpy(x1), torch.from_numpy(x2)))
    unif = float(uniformity(torch.from_numpy(x1)))

    fig = Figure(figsize=(18, 5))
    ax_dist, ax_angle, ax_class = fig.subplots(1, 3)
    ax_dist.hist(np.linalg.norm(x1 - x2, axis=1), bins=50, color="tab:blue", alpha=0.8)
    ax_dist.set(xlabel="‖z1 − z2‖ (positive pairs)", ylabel="count", title="Positive-pair distance")

    partner = rng.permutation(len(x1))
    distinct = partner != np.arange(len(x1))
    bins = np.linspace(0, 180, 73)
    ax_angle.hist(_angles_degrees(x1, x2), bins=bins, density=True, alpha=0.6, label="positive pairs")
    random_angles = _angles_degrees(x1[distinct], x1[partner[distinct]])
    ax_angle.hist(random_angles, bins=bins, density=True, alpha=0.6, label="random pairs")
    ax_angle.set(xlabel="angle (degrees)", ylabel="density", title="Angle distribution")
    ax_angle.legend()

    classes = np.unique(labels)[:20]
    within = []
    for c in classes:
        members = x1[labels == c]
        members = members[_subsample(len(members), max_per_class, rng)]
        i, j = np.triu_indices(len(members), k=1)
        within.append(_angles_degrees(members[i], members[j]))
    ax_class.boxplot(within, tick_labels=[str(c) for c in classes], showfliers=False)
    ax_class.set(xlabel="class", ylabel="within-class angle (degrees)", title="Per-class angular spread")
    ax_class.tick_params(axis="x", labelrotation=90, labelsize=7)

    heading = f"alignment {align:.4f} (lower is tighter), uniformity {unif:.4f} (lower is more uniform)"
    fig.suptitle(f"{title}: {heading}" if title else heading)
    return _save(fig, path)


CURVE_LABELS = {"loss": "training loss (per step, mean over the epoch)", "train_acc": "train accuracy (%)",
                "momentum": "key-encoder momentum", "lr": "learning rate"}


def plot_training_curves(logs, path, metrics=("loss", "train_acc")):
    """Per-epoch curves, one panel per metric and one line per run.

    ``logs`` maps a run name to its list of per-epoch dicts (keys ``epoch`` and each metric).
    """
    if not logs:
        raise ValueError("logs must map at least one run name to its per-epoch entries")
    fig = Figure(figsize=(5.5 * len(metrics), 4))
    axes = np.atleast_1d(fig.subplots(1, len(metrics)))
    colours = _palette(min(len(logs), 20))
    styles = [(colours[i % len(colours)], ("-", "--", ":")[i // len(colours) % 3]) for i in range(len(logs))]
    for ax, metric in zip(axes, metrics):
        for (name, entries), (colour, line) in zip(logs.items(), styles):  # one colour and dash per run
            if any(metric not in e for e in entries):
                raise ValueError(f"logs[{name!r}] has epochs without the metric {metric!r}")
            ax.plot([e["epoch"] for e in entries], [e[metric] for e in entries], label=name, color=colour, ls=line)
        ax.set(xlabel="epoch", ylabel=CURVE_LABELS.get(metric, metric.replace("_", " ")), title=metric.replace("_", " "))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[-1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    return _save(fig, path)


_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")
ALIGNMENT_LABEL = "alignment  E‖z − z⁺‖²  (squared distance on the unit sphere, 0–4; lower is tighter)"
UNIFORMITY_LABEL = "uniformity  log E exp(−2‖z − z′‖²)  (nats; lower is more uniform)"


def _caption(fig, caption):
    """The caption line under a figure (below every axis and legend): what data and profile produced it."""
    fig.supxlabel(caption, x=0.01, ha="left", fontsize=8)


def _scatter_panel(ax, rows, title, styles):
    """One marker per run (``styles[label]``: its shape and colour) and a legend entry "label (acc %)": labels
    never overlap."""
    for r in rows:
        marker, colour = styles[r["label"]]
        ax.scatter(r["alignment"], r["uniformity"], s=70, marker=marker, color=colour, edgecolors="black",
                   linewidths=0.5, label=f"{r['label']} ({r['test_acc']:.1f}%)")
    ax.set(xlabel=ALIGNMENT_LABEL, ylabel=UNIFORMITY_LABEL, title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(0.0, -0.14), fontsize=7, ncol=2, frameon=False,
              title="run (test accuracy)", title_fontsize=8)


def alignment_uniformity_figure(runs, caption, reference=None):
    """Alignment (x) against uniformity (y), one marker per run; lower-left is better on both axes.

    ``runs`` (and ``reference``) are lists of dicts with ``label`` (a short method label,
    ``registry.Method.short_label``), ``alignment``, ``uniformity`` and ``test_acc``. The reference
    (published CIFAR-100) points get their own panel, titled as such, never the axes of ``runs``:
    their dataset and recipe differ. ``caption`` names the dataset, profile and seeds.
    """
    if not runs:
        raise ValueError("runs must hold at least one run")
    panels = [(runs, "This study")] + ([(reference, "Reference: published CIFAR-100 numbers")] if reference else [])
    labels = list(dict.fromkeys(r["label"] for rows, _ in panels for r in rows))  # one style per method, both panels
    colours = _palette(min(len(labels), 20))
    styles = {label: (_MARKERS[i % len(_MARKERS)], colours[i % len(colours)]) for i, label in enumerate(labels)}
    fig = Figure(figsize=(7.5 * len(panels), 7.5), layout="constrained")
    for ax, (rows, title) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        _scatter_panel(ax, rows, title, styles)
    _caption(fig, caption)
    return fig


def plot_alignment_uniformity(runs, path, caption, reference=None):
    """``alignment_uniformity_figure`` as a PNG."""
    return _save(alignment_uniformity_figure(runs, caption, reference), path)


def accuracy_interval_figure(rows, caption, baseline="SupCon", level=0.95):
    """Each method's accuracy with its confidence interval over seeds, and its difference to ``baseline``.

    ``rows`` are dicts with ``label`` and ``accs`` (test accuracy of each seed, in %). Left: the mean
    and its Student's t interval; right: the difference to the ``baseline`` row with Welch's interval
    (``desupcon.analysis.stats``). A run with one seed has a point and "1 seed", no bar.
    """

    if not rows:
        raise ValueError("rows must hold at least one run")
    base = next((r for r in rows if r["label"] == baseline), None)
    if base is None:
        raise ValueError(f"no row is labelled '{baseline}' (the baseline of the difference panel); "
                         f"got {[r['label'] for r in rows]}")
    fig = Figure(figsize=(12, 1.2 + 0.45 * len(rows)), layout="constrained")
    left, right = fig.subplots(1, 2, sharey=True)
    y = np.arange(len(rows))[::-1]
    pct = f"{level:.0%}"
    for ax, interval, xlabel in (
            (left, lambda r: mean_interval(r["accs"], level), "test accuracy (%)"),
            (right, lambda r: difference_interval(r["accs"], base["accs"], level),
             f"difference to {baseline} (percentage points)")):
        for yi, r in zip(y, rows):
            ci = interval(r)
            ax.errorbar(ci.mean, yi, xerr=None if ci.half_width is None else ci.half_width, fmt="o", capsize=4,
                        color="black" if r is base else "tab:blue")
            if ci.half_width is None:
                ax.annotate(f"{ci.n} seed", (ci.mean, yi), xytext=(6, -3), textcoords="offset points", size=7)
        ax.set(xlabel=xlabel)
        ax.grid(alpha=0.3, axis="x")
    right.axvline(0, color="grey", lw=1)
    left.set_yticks(y, [f"{r['label']} (n={len(r['accs'])})" for r in rows])
    left.set_title(f"Mean test accuracy, {pct} CI over seeds")
    right.set_title(f"Difference to {baseline}, {pct} Welch CI")
    _caption(fig, caption)
    return fig


def plot_accuracy_intervals(rows, path, caption, baseline="SupCon", level=0.95):
    """``accuracy_interval_figure`` as a PNG."""
    return _save(accuracy_interval_figure(rows, caption, baseline, level), path)


SWEEP_AXES = {"alpha": "α (pull weight)", "beta": "β (push weight)", "temperature": "τ (temperature)",
              "hybrid_lambda": "λ (weight of SupCon in the hybrid)"}


def sweep_figure(sweeps, caption, reference=None):
    """Test accuracy against each swept hyperparameter, one panel per sweep, mean ± std over seeds.

    ``sweeps`` maps a swept field (``alpha``, ``beta``, ``temperature``, ``hybrid_lambda``) to a list
    of dicts ``{"value", "mean", "std"}``; ``reference`` (optional) maps the same fields to lists of
    ``{"value", "test_acc"}``: the published CIFAR-100 numbers, drawn hollow and named as such in the
    legend only where given (pass them only when the study's dataset is CIFAR-100).
    """
    if not sweeps:
        raise ValueError("sweeps must map at least one swept field to its points")
    fig = Figure(figsize=(4.2 * len(sweeps), 3.8), layout="constrained")
    for ax, (field, points) in zip(np.atleast_1d(fig.subplots(1, len(sweeps))), sweeps.items()):
        points = sorted(points, key=lambda p: p["value"])
        ax.errorbar([p["value"] for p in points], [p["mean"] for p in points], yerr=[p["std"] for p in points],
                    marker="o", capsize=3, label="this study")
        if reference and reference.get(field):
            ref = sorted(reference[field], key=lambda p: p["value"])
            ax.plot([p["value"] for p in ref], [p["test_acc"] for p in ref], marker="s", ls="--",
                    markerfacecolor="none", color="grey", label="reference (published CIFAR-100)")
        ax.set(xlabel=SWEEP_AXES.get(field, field), ylabel="linear-probe test accuracy (%)", title=f"{field} sweep")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _caption(fig, caption)
    return fig


def plot_sweeps(sweeps, path, caption, reference=None):
    """``sweep_figure`` as a PNG."""
    return _save(sweep_figure(sweeps, caption, reference), path)


def plot_accuracy_vs_epoch(points, path, title=None):
    """k-NN and linear-probe accuracy of saved checkpoints against their epoch (PNG).

    ``points`` is a list of dicts with ``epoch`` and any of ``knn_top1``, ``probe_top1``,
    ``probe_top5`` (``evaluate_checkpoints``' points; missing or None values are left out).
    """
    if not points:
        raise ValueError("points must hold at least one evaluated checkpoint")
    points = sorted(points, key=lambda p: p["epoch"])
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    series_labels = {"knn_top1": "k-NN top-1", "probe_top1": "linear top-1", "probe_top5": "linear top-5"}
    for key, label in series_labels.items():
        series = [(p["epoch"], p[key]) for p in points if p.get(key) is not None]
        if series:
            ax.plot(*zip(*series), marker="o", label=label)
    ax.set(xlabel="epoch", ylabel="test accuracy on frozen features (%)", title=title or "Accuracy of saved checkpoints")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)
