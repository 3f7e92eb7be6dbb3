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
from matplotlib.colors import to_hex, to_rgb
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from plotly.subplots import make_subplots
from sklearn.manifold import TSNE

from desupcon.analysis.stats import difference_interval, mean_interval, t_factor
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
    """Hex colours: tab10 up to 10 classes (no two alike), tab20 (paired shades) up to 20, else evenly sampled
    from turbo."""
    if num_colours <= 20:
        return [to_hex(c) for c in colormaps["tab10" if num_colours <= 10 else "tab20"].colors[:num_colours]]
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
    panels = [(f"All {len(classes)} classes", classes)]
    if len(classes) > num_random_classes:  # else a random subset would be every class again
        subset = np.sort(rng.choice(classes, size=num_random_classes, replace=False))
        panels.append((f"{num_random_classes} random classes", subset))
    colours = dict(zip(classes, _palette(len(classes))))
    fig = make_subplots(
        rows=1,
        cols=len(panels),
        specs=[[{"type": "scene"}] * len(panels)],
        subplot_titles=[name for name, _ in panels],
        horizontal_spacing=0.02,
    )
    for col, (_, panel_classes) in enumerate(panels, start=1):
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
    axis = {"range": [-1.1, 1.1], "showbackground": False, "showticklabels": False, "title": {"text": ""}}
    fig.update_scenes(
        xaxis=axis,  # the principal components carry no units: no titles floating beside the sphere
        yaxis=axis,
        zaxis=axis,
        aspectmode="cube",
        camera={"eye": {"x": 1.0, "y": 1.0, "z": 0.8}},  # closer than plotly's default: the sphere fills its panel
    )
    what = f"{len(points)} points of {len(classes)} classes on the unit sphere, PCA to 3-D"
    fig.update_layout(
        title=f"{title}<br><sup>{what}</sup>" if title else f"Embeddings: {what}",
        height=650,
        margin={"l": 0, "r": 0, "t": 80, "b": 0},
        legend={"title": {"text": "class (click to toggle)"}, "itemsizing": "constant", "tracegroupgap": 0},
    )
    return fig


def plot_hypersphere(
    embeddings, labels, path, num_random_classes=10, max_points=3000, seed=0, title=None, class_names=None
):
    """Interactive, offline 3D view of the embeddings on the unit sphere (HTML).

    Two panels, all classes and ``num_random_classes`` (default 10) classes drawn with ``seed``; a legend
    click toggles a class in both. A dataset with no more than ``num_random_classes`` classes gets the
    first panel only (a random subset of it would repeat it). plotly.js is written once per folder as ``plotly.min.js``
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


CURVE_LABELS = {"loss": "training loss per step (epoch mean)", "train_acc": "train accuracy (%)",
                "momentum": "key-encoder momentum", "lr": "learning rate"}
CURVE_RANGES = {"train_acc": (0.0, 100.0), "momentum": (0.0, 1.0)}  # a metric's axis never runs past its range
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")
_DASHES = ("-", "--", "-.", ":")


def method_family(label):
    """The method family of a short run label, its first word: "LW-SupCRD α=1 β=10 + bank 512" -> "LW-SupCRD"
    (``registry.Method.short_label`` starts every label with the method's name)."""
    return label.split(" ", 1)[0].rstrip(",")


def _shade(colour, amount):
    """``colour`` mixed with white (``amount`` > 0) or black (``amount`` < 0) by ``|amount|``: its hue, lighter
    or darker."""
    rgb = np.array(to_rgb(colour))
    return to_hex(rgb + abs(amount) * ((1.0 if amount > 0 else 0.0) - rgb))


def run_styles(labels):
    """``{label: (colour, marker, dash)}`` of runs told apart at a glance: one hue per method family (``_palette``,
    in order of first appearance), and within a family its own shade, marker and line dash per run, so that no
    two runs look alike. Its keys run family by family (the legends' order)."""
    labels = list(dict.fromkeys(labels))
    families = list(dict.fromkeys(method_family(label) for label in labels))
    hues = _palette(len(families))
    styles = {}
    for family, hue in zip(families, hues):
        members = [label for label in labels if method_family(label) == family]
        shades = np.linspace(-0.3, 0.45, len(members)) if len(members) > 1 else [0.0]
        for i, (label, amount) in enumerate(zip(members, shades)):
            dash = _DASHES[(i + i // len(_MARKERS)) % len(_DASHES)]  # marker and dash repeat together after 48
            styles[label] = (_shade(hue, amount), _MARKERS[i % len(_MARKERS)], dash)
    return styles


def _clamp(ax, bounds, which="y"):
    """Cut the autoscaled ``which`` ("x" or "y") limits of ``ax`` to the metric's ``bounds`` (a pair; None: no
    cut): an accuracy axis fits its data and never runs past 100%."""
    if bounds:
        low, high = getattr(ax, f"get_{which}lim")()
        getattr(ax, f"set_{which}lim")(max(low, bounds[0]), min(high, bounds[1]))


def _caption(fig, caption):
    """The caption under a figure (below every axis and legend): what data and profile produced it, then notes."""
    fig.supxlabel(caption, x=0.01, ha="left", fontsize=8)


def training_curves_figure(logs, caption, metrics=("loss", "train_acc")):
    """Per-epoch curves, one panel per metric and one line per run: colour is the method family, shade, marker
    and dash the run within it (``run_styles``); the legend, grouped by family, sits right of the panels.

    ``logs`` maps a run's short label (``registry.Method.short_label``) to its list of per-epoch dicts (keys
    ``epoch`` and each metric); ``caption`` names the data, profile and seeds; ``metrics`` (default loss and
    train accuracy) are the keys drawn, one panel each.
    """
    if not logs:
        raise ValueError("logs must map at least one run name to its per-epoch entries")
    styles = run_styles(logs)
    fig = Figure(figsize=(4.6 * len(metrics) + 3.4, 4.6), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics):
        for name in styles:  # family by family
            entries = logs[name]
            if any(metric not in e for e in entries):
                raise ValueError(f"logs[{name!r}] has epochs without the metric {metric!r}")
            colour, marker, dash = styles[name]
            ax.plot([e["epoch"] for e in entries], [e[metric] for e in entries], label=name, color=colour, ls=dash,
                    lw=1.2, marker=marker, markersize=4, markevery=max(1, len(entries) // 12))
        ax.set(xlabel="epoch", ylabel=CURVE_LABELS.get(metric, metric.replace("_", " ")), title=metric.replace("_", " "))
        _clamp(ax, CURVE_RANGES.get(metric))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right upper", fontsize=7, frameon=False,
               ncol=1 if len(logs) <= 20 else 2, title="run (colour: method)", title_fontsize=8)
    several = len({method_family(name) for name in logs}) > 1
    note = "\nEach method minimises its own loss: compare the shapes of the loss curves, not their levels." \
        if "loss" in metrics and several else ""
    _caption(fig, caption + note)
    return fig


def plot_training_curves(logs, path, caption, metrics=("loss", "train_acc")):
    """``training_curves_figure`` as a PNG."""
    return _save(training_curves_figure(logs, caption, metrics), path)


ALIGNMENT_LABEL = "alignment  E‖z − z⁺‖²  (squared distance on the unit sphere, 0–4; lower is tighter)"
UNIFORMITY_LABEL = "uniformity  log E exp(−2‖z − z′‖²)  (nats; lower is more uniform)"


def _scatter_panel(ax, rows, title, styles):
    """One marker per run (``styles[label]``: its colour and shape) and a legend entry "label (acc %)" below the
    axes, grouped by method family: labels never overlap the data."""
    by_label = {r["label"]: r for r in rows}
    for label in (label for label in styles if label in by_label):  # family by family, as in every panel
        r = by_label[label]
        colour, marker, _ = styles[label]
        ax.scatter(r["alignment"], r["uniformity"], s=70, marker=marker, color=colour, edgecolors="black",
                   linewidths=0.5, label=f"{label} ({r['test_acc']:.1f}%)")
    ax.set(xlabel=ALIGNMENT_LABEL, ylabel=UNIFORMITY_LABEL, title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(0.0, -0.14), fontsize=7, ncol=2, frameon=False,
              title="run (test accuracy); colour: method", title_fontsize=8)


def alignment_uniformity_figure(runs, caption, reference=None):
    """Alignment (x) against uniformity (y), one marker per run; lower-left is better on both axes.

    ``runs`` (and ``reference``) are lists of dicts with ``label`` (a short method label,
    ``registry.Method.short_label``), ``alignment``, ``uniformity`` and ``test_acc``. A run's colour is its
    method family and its shade and marker the run (``run_styles``), the same in both panels. The reference
    (published CIFAR-100) points get their own panel, titled as such, never the axes of ``runs``:
    their dataset and recipe differ. ``caption`` names the dataset, profile and seeds.
    """
    if not runs:
        raise ValueError("runs must hold at least one run")
    panels = [(runs, "This study")] + ([(reference, "Reference: published CIFAR-100 numbers")] if reference else [])
    styles = run_styles(r["label"] for rows, _ in panels for r in rows)  # one style per run label, both panels
    fig = Figure(figsize=(7.5 * len(panels), 7.5), layout="constrained")
    for ax, (rows, title) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        _scatter_panel(ax, rows, title, styles)
    _caption(fig, caption)
    return fig


def plot_alignment_uniformity(runs, path, caption, reference=None):
    """``alignment_uniformity_figure`` as a PNG."""
    return _save(alignment_uniformity_figure(runs, caption, reference), path)


ACCURACY_RANGE = (0.0, 100.0)  # a test accuracy in %
DIFFERENCE_RANGE = (-100.0, 100.0)  # a difference of two accuracies, in percentage points
MIN_SEEDS_FOR_INTERVAL = 3  # from 2 seeds a 95% t interval is ±12.7 standard errors wide: no useful bar


def _interval_row(ax, y, centre, seeds, ci, bounds, colour):
    """One row of an interval panel at height ``y``; returns whether its bar was clipped.

    With an interval ``ci``: a dot at ``centre`` and the interval cut to the metric's ``bounds``, a "†" over a
    cut end. Without one (``ci`` None: too few seeds): ``centre`` as an open circle and, for two or more, each
    of ``seeds`` as a tick.
    """
    if ci is None:
        if len(seeds) > 1:
            ax.plot(seeds, [y] * len(seeds), ls="none", marker="|", markersize=10, color=colour)
        ax.plot([centre], [y], ls="none", marker="o", markerfacecolor="white", markeredgecolor=colour)
        return False
    low, high = ci.clipped(*bounds)
    ax.errorbar(centre, y, xerr=[[centre - low], [high - centre]], fmt="o", capsize=4, color=colour)
    cut = [end for end, raw in ((low, ci.low), (high, ci.high)) if end != raw]
    for end in cut:
        ax.annotate("†", (end, y), xytext=(-7 if end == high else 7, 5), textcoords="offset points", ha="center",
                    size=11, weight="bold", color=colour)
    return bool(cut)


def accuracy_interval_figure(rows, caption, baseline="SupCon", level=0.95):
    """Each method's accuracy with its confidence interval over seeds, and its difference to ``baseline``.

    ``rows`` are dicts with ``label`` and ``accs`` (test accuracy of each seed, in %). Left: the mean and its
    Student's t interval; right: the difference to the ``baseline`` row with Welch's interval
    (``desupcon.analysis.stats``), both at ``level`` (default 0.95). Intervals are cut to the metric's range
    (0–100%, ±100 points), a "†" marking a cut end. A run with fewer than ``MIN_SEEDS_FOR_INTERVAL`` seeds (or,
    on the right, a baseline with fewer) gets no bar: its seeds are ticks and their mean an open circle. The
    accuracy axis fits the data within 0–100%; the caption states all of this under ``caption``.
    """
    if not rows:
        raise ValueError("rows must hold at least one run")
    base = next((r for r in rows if r["label"] == baseline), None)
    if base is None:
        raise ValueError(f"no row is labelled '{baseline}' (the baseline of the difference panel); "
                         f"got {[r['label'] for r in rows]}")
    fig = Figure(figsize=(12, 1.8 + 0.42 * len(rows)), layout="constrained")
    left, right = fig.subplots(1, 2, sharey=True)
    y = np.arange(len(rows))[::-1]
    pct = f"{level:.0%}"
    base_mean = mean_interval(base["accs"], level).mean
    clipped, bars = False, False
    for yi, r in zip(y, rows):
        colour = "black" if r is base else "tab:blue"
        enough = len(r["accs"]) >= MIN_SEEDS_FOR_INTERVAL
        bars |= enough
        ci = mean_interval(r["accs"], level)
        clipped |= _interval_row(left, yi, ci.mean, r["accs"], ci if enough else None, ACCURACY_RANGE, colour)
        if r is base:
            right.plot([0.0], [yi], ls="none", marker="D", color="black")
            right.annotate("baseline", (0.0, yi), xytext=(7, -3), textcoords="offset points", size=7)
            continue
        diff = difference_interval(r["accs"], base["accs"], level)
        both = enough and len(base["accs"]) >= MIN_SEEDS_FOR_INTERVAL
        clipped |= _interval_row(right, yi, diff.mean, [a - base_mean for a in r["accs"]], diff if both else None,
                                 DIFFERENCE_RANGE, colour)
    for ax, bounds in ((left, ACCURACY_RANGE), (right, DIFFERENCE_RANGE)):
        _clamp(ax, bounds, "x")
        ax.grid(alpha=0.3, axis="x")
    right.axvline(0, color="grey", lw=1)
    need = f"n ≥ {MIN_SEEDS_FOR_INTERVAL}"
    left.set(xlabel="test accuracy (%)", title="Mean test accuracy\n"
             + (f"{pct} t CI over seeds ({need})" if bars else f"no run has {need} seeds: no intervals"))
    right.set(xlabel=f"difference to {baseline} (percentage points)", title=f"Difference to {baseline}\n"
              + (f"{pct} Welch CI ({need} on both)" if bars else "difference of the means"))
    left.set_yticks(y, [f"{r['label']} (n={len(r['accs'])})" for r in rows])
    notes = []
    if bars:
        notes.append(f"Bars: {pct} Student's t interval of the mean (left), Welch's interval of the difference "
                     f"(right), over seeds, cut to the metric's range (0–100%, ±100 points)"
                     + ("; † marks a cut end." if clipped else "."))
    if min(len(r["accs"]) for r in rows) < MIN_SEEDS_FOR_INTERVAL:
        notes.append(f"Fewer than {MIN_SEEDS_FOR_INTERVAL} seeds: no bar; each seed is a tick (right: minus "
                     f"{baseline}'s mean) and their mean an open circle. From 2 seeds a {pct} t interval is "
                     f"±{t_factor(1, level):.1f} standard errors wide, no useful interval.")
    _caption(fig, "\n".join([caption, *notes]))
    return fig


def plot_accuracy_intervals(rows, path, caption, baseline="SupCon", level=0.95):
    """``accuracy_interval_figure`` as a PNG."""
    return _save(accuracy_interval_figure(rows, caption, baseline, level), path)


SWEEP_AXES = {"alpha": "α (pull weight)", "beta": "β (push weight)", "temperature": "τ (temperature)",
              "hybrid_lambda": "λ (weight of SupCon in the hybrid)"}


def _text_panel(ax, text):
    """A panel that is a short text in a box instead of an axis (a sweep with no curve to draw)."""
    ax.set_axis_off()
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=9, linespacing=1.6,
            bbox={"boxstyle": "round", "facecolor": "#f2f2f2", "edgecolor": "#bbbbbb"})


def sweep_figure(sweeps, caption, reference=None):
    """Test accuracy against each swept hyperparameter, one panel per sweep: the mean over seeds, ± std where
    a point has 2 or more seeds (its n beside it).

    ``sweeps`` maps a swept field (``alpha``, ``beta``, ``temperature``, ``hybrid_lambda``) to a list of dicts
    ``{"value", "mean", "std", "n"}`` (``n``: its number of seeds); ``reference`` (optional) maps the same
    fields to lists of ``{"value", "test_acc"}``: the published CIFAR-100 numbers, drawn hollow and named as
    such in the legend only where given (pass them only when the study's dataset is CIFAR-100). A sweep of
    one value (or of none yet) is a short text in its panel, not an axis; the panels with a curve share one
    accuracy range that fits their data within 0–100%, ticks at the swept values.
    """
    if not sweeps:
        raise ValueError("sweeps must map at least one swept field to its points")
    reference = reference or {}
    fig = Figure(figsize=(4.2 * len(sweeps), 4.0), layout="constrained")
    curve_axes = []
    for ax, (field, points) in zip(np.atleast_1d(fig.subplots(1, len(sweeps))), sweeps.items()):
        ax.set_title(f"{field} sweep")
        if not points:
            _text_panel(ax, "no run of this sweep\nis recorded yet")
            continue
        if len(points) == 1:
            (p,) = points
            _text_panel(ax, f"one value only, no curve:\n{SWEEP_AXES.get(field, field)} = {p['value']:g}\n"
                            f"{p['mean']:.1f}% test accuracy ({p['n']} seed{'s' if p['n'] > 1 else ''})")
            continue
        if curve_axes:
            ax.sharey(curve_axes[0])  # one accuracy range for every panel with a curve
        curve_axes.append(ax)
        points = sorted(points, key=lambda p: p["value"])
        values = [p["value"] for p in points]
        ax.plot(values, [p["mean"] for p in points], marker="o", color="tab:blue", label="this study")
        several = [p for p in points if p["n"] > 1]
        ax.errorbar([p["value"] for p in several], [p["mean"] for p in several], yerr=[p["std"] for p in several],
                    fmt="none", capsize=3, color="tab:blue")
        for p in several:
            ax.annotate(f"n={p['n']}", (p["value"], p["mean"]), xytext=(5, -12), textcoords="offset points", size=7)
        if reference.get(field):
            ref = sorted(reference[field], key=lambda p: p["value"])
            ax.plot([p["value"] for p in ref], [p["test_acc"] for p in ref], marker="s", ls="--",
                    markerfacecolor="none", color="grey", label="reference (published CIFAR-100)")
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), fontsize=7, frameon=False)
        ax.set_xticks(values, [f"{v:g}" for v in values])
        ax.margins(x=0.12)  # room for an "n=" beside the last point
        ax.set(xlabel=SWEEP_AXES.get(field, field), ylabel="linear-probe test accuracy (%)")
        ax.grid(alpha=0.3)
    if curve_axes:
        _clamp(curve_axes[0], ACCURACY_RANGE)
    _caption(fig, f"{caption}\nPoints: mean over seeds; bars: ± 1 std over seeds where a point has 2 or more (n beside it).")
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
