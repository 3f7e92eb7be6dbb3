"""desupcon.analysis.plots writes the right kind of file; the hypersphere HTML is offline, small and complete;
the study figures tell the truth (intervals within 0–100%, one-value sweeps said, 16 runs told apart)."""

import colorsys
import json
import re

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex, to_rgb

from desupcon.analysis import plots
from desupcon.analysis.plots import (_hypersphere_figure, plot_accuracy_vs_epoch, plot_alignment,
                                     plot_alignment_uniformity, plot_hypersphere, plot_training_curves, plot_tsne)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _clusters(num_classes, per_class, dim=64, seed=0):
    """Gaussian clusters, one per class: embeddings (N, dim) and labels (N,)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(num_classes), per_class)
    centres = rng.normal(size=(num_classes, dim))
    return (centres[labels] + 0.4 * rng.normal(size=(len(labels), dim))).astype(np.float32), labels


def _assert_png(path):
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert path.stat().st_size > 1000


def _traces_in_html(path):
    """The figure's trace list, parsed from the Plotly.newPlot call in the HTML."""
    html = path.read_text()
    start = html.index("Plotly.newPlot(")
    data_start = html.index("[", start)
    data, _ = json.JSONDecoder().raw_decode(html[data_start:])
    return data


def test_plot_tsne_writes_png_from_tensors(tmp_path):
    x, labels = _clusters(25, 12)
    target = tmp_path / "sub" / "tsne_run.png"
    path = plot_tsne(torch.from_numpy(x), torch.from_numpy(labels), target, max_points=200)
    assert path == target
    _assert_png(path)
    assert plt.get_fignums() == []


def test_plot_alignment_draws_three_labelled_panels_and_its_metrics_in_the_title(tmp_path, monkeypatch):
    from desupcon.engine.metrics import alignment, uniformity

    x, labels = _clusters(30, 10)
    z2 = x + 0.1 * np.random.default_rng(1).normal(size=x.shape)
    saved = []
    real_save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: saved.append(fig) or real_save(fig, path))
    _assert_png(plot_alignment(x, z2, labels, tmp_path / "run_alignment.png", title="LW-SupCRD α=1 β=10 · digits"))
    fig = saved[0]
    assert [ax.get_title() for ax in fig.axes] == ["Positive-pair distance", "Angle distribution",
                                                   "Per-class angular spread"]
    assert [ax.get_xlabel() for ax in fig.axes] == ["‖z1 − z2‖ (positive pairs)", "angle (degrees)", "class"]
    unit = lambda a: torch.nn.functional.normalize(torch.from_numpy(a).double(), dim=1)
    heading = fig._suptitle.get_text()
    assert heading.startswith("LW-SupCRD α=1 β=10 · digits: ")
    assert f"alignment {float(alignment(unit(x), unit(z2))):.4f}" in heading
    assert f"uniformity {float(uniformity(unit(x))):.4f}" in heading
    assert len(fig.axes[2].get_xticklabels()) == 20  # one box per class, at most 20 of the 30


def test_plot_training_curves_writes_png(tmp_path):
    def log(scale):
        epochs = range(1, 6)
        return [{"epoch": e, "loss": scale / e, "train_acc": 9 * e, "lr": 0.1, "seconds": 2} for e in epochs]

    path = plot_training_curves({"supcon": log(1), "lw_supcrd": log(2)}, str(tmp_path / "curves.png"), "caption")
    _assert_png(path)
    _assert_png(plot_training_curves({"supcon": log(1)}, tmp_path / "lr.png", "caption", metrics=("lr",)))


RUNS = [dict(label="LW-SupCRD α=1 β=10", alignment=0.83, uniformity=-3.5, test_acc=75.6, accs=[75.0, 76.2, 75.6]),
        dict(label="SupCon", alignment=0.44, uniformity=-2.6, test_acc=69.1, accs=[69.0, 69.5, 68.8]),
        dict(label="CRD + bank 512 (ablation)", alignment=0.45, uniformity=-2.61, test_acc=68.0, accs=[68.0])]


def _legend_texts(ax):
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_alignment_uniformity_figure_puts_the_reference_in_its_own_titled_panel(tmp_path):
    reference = [dict(label="LW-SupCRD α=1 β=10", alignment=1.199, uniformity=-3.7104, test_acc=73.35)]
    fig = plots.alignment_uniformity_figure(RUNS, "Data: digits test split (smoke profile); 1 seed(s) per run",
                                            reference=reference)
    ours, theirs = fig.axes
    assert ours.get_title() == "This study" and theirs.get_title() == "Reference: published CIFAR-100 numbers"
    assert _legend_texts(ours) == ["LW-SupCRD α=1 β=10 (75.6%)", "SupCon (69.1%)", "CRD + bank 512 (ablation) (68.0%)"]
    assert _legend_texts(theirs) == ["LW-SupCRD α=1 β=10 (73.3%)"]
    assert [len(c.get_offsets()) for c in ours.collections] == [1, 1, 1]  # one marker per run, no text on the axes
    assert not ours.texts and len(theirs.collections) == 1
    assert {tuple(c.get_offsets()[0]) for c in theirs.collections} == {(1.199, -3.7104)}
    assert "squared distance" in ours.get_xlabel() and "nats" in ours.get_ylabel()
    assert [t.get_text() for t in fig.texts] == ["Data: digits test split (smoke profile); 1 seed(s) per run"]
    style = lambda c: (c.get_paths()[0].vertices.tobytes(), tuple(c.get_facecolor()[0]))
    assert len({style(c) for c in ours.collections}) == 3  # distinct marker and colour per run
    assert style(theirs.collections[0]) == style(ours.collections[0])  # one method, one style in both panels
    alone = plots.alignment_uniformity_figure(RUNS[:1], "caption")
    assert len(alone.axes) == 1 and alone.axes[0].get_title() == "This study"
    _assert_png(plot_alignment_uniformity(RUNS, tmp_path / "au.png", "caption", reference=reference))


def _caption_text(fig):
    return "\n".join(t.get_text() for t in fig.texts)


def test_accuracy_interval_figure_draws_student_t_and_welch_intervals():
    from scipy import stats

    fig = plots.accuracy_interval_figure(RUNS, "Data: digits (smoke profile)")
    left, right = fig.axes
    assert [t.get_text() for t in left.get_yticklabels()] == [
        "LW-SupCRD α=1 β=10 (n=3)", "SupCon (n=3)", "CRD + bank 512 (ablation) (n=1)"]
    assert "95% t CI" in left.get_title() and right.get_title() == "Difference to SupCon\n95% Welch CI (n ≥ 3 on both)"
    assert right.get_xlabel() == "difference to SupCon (percentage points)"
    lw = left.containers[0]
    (x, _), = lw.lines[0].get_xydata()
    assert x == pytest.approx(np.mean(RUNS[0]["accs"]))
    low, high = stats.t.interval(0.95, 2, loc=np.mean(RUNS[0]["accs"]), scale=stats.sem(RUNS[0]["accs"]))
    segment = lw.lines[2][0].get_segments()[0]
    assert segment[:, 0] == pytest.approx([low, high])
    welch = stats.ttest_ind(RUNS[0]["accs"], RUNS[1]["accs"], equal_var=False).confidence_interval(0.95)
    diff_segment = right.containers[0].lines[2][0].get_segments()[0]
    assert diff_segment[:, 0] == pytest.approx([welch.low, welch.high])
    assert len(left.containers) == 2 and len(right.containers) == 1  # the one-seed run gets no bar
    assert not left.texts  # nothing clipped, no "†"
    assert "From 2 seeds a 95% t interval is ±12.7 standard errors wide" in _caption_text(fig)
    with pytest.raises(ValueError, match="no row is labelled 'SupCon'"):
        plots.accuracy_interval_figure([RUNS[0]], "caption")


def test_accuracy_intervals_stay_within_0_to_100_percent_and_two_seeds_draw_their_seeds_not_a_bar():
    """The smoke study's case: a 2-seed run's t interval (±12.7 standard errors) ran past 100%."""
    rows = [dict(label="LW-SupCRD α=1 β=10 + bank 512", accs=[99.9, 98.3, 99.6]),  # t interval 96.4–102.1
            dict(label="SupCon", accs=[98.1, 97.5, 97.9]),
            dict(label="LW-SupCRD α=1 β=10", accs=[96.39, 96.94])]  # t interval 93.2–100.2
    fig = plots.accuracy_interval_figure(rows, "Data: digits test split (smoke profile)")
    left, right = fig.axes
    assert 0 <= left.get_xlim()[0] and left.get_xlim()[1] <= 100
    top = left.containers[0].lines[2][0].get_segments()[0][:, 0]
    assert top[0] == pytest.approx(plots.mean_interval(rows[0]["accs"]).low) and top[1] == 100.0  # cut at 100%
    assert [t.get_text() for t in left.texts] == ["†"] and "† marks a cut end" in _caption_text(fig)
    assert len(left.containers) == 2 and len(right.containers) == 1  # the 2-seed run has no bar on either side
    two_seeds = [tuple(line.get_xdata()) for line in left.lines if list(line.get_ydata()) == [0, 0]]
    assert two_seeds == [(96.39, 96.94)]  # its seeds, as ticks
    assert "Fewer than 3 seeds: no bar; each seed is a tick" in _caption_text(fig)
    assert "Data: digits test split (smoke profile)" in _caption_text(fig)


def test_plot_accuracy_vs_epoch_skips_missing_values(tmp_path, monkeypatch):
    """The points of ``moco.evaluate_checkpoints`` (keys ``knn_top1``, ``probe_top1``, ``probe_top5``)."""
    points = [
        {"epoch": 100, "knn_top1": 40.0, "probe_top1": 45.0, "probe_top5": 72.0},
        {"epoch": 50, "knn_top1": 30.0, "probe_top1": None, "probe_top5": None},
    ]
    saved = []
    real_save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: saved.append(fig) or real_save(fig, path))
    _assert_png(plot_accuracy_vs_epoch(points, tmp_path / "acc.png", title="MoCo-v3 ViT-S"))
    lines = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in saved[0].axes[0].lines}
    assert lines == {"k-NN top-1": ([50, 100], [30.0, 40.0]), "linear top-1": ([100], [45.0]),
                     "linear top-5": ([100], [72.0])}


def test_hypersphere_figure_has_two_scenes_and_one_trace_per_class(tmp_path):
    x, labels = _clusters(15, 20)
    fig = _hypersphere_figure(x, labels, num_random_classes=10, seed=3)
    assert len(fig.data) == 15 + 10 + 2
    assert {trace.scene for trace in fig.data} == {"scene", "scene2"}
    assert [a.text for a in fig.layout.annotations] == ["All 15 classes", "10 random classes"]
    points = [t for t in fig.data if t.mode == "markers"]
    first, second = points[:15], points[15:]
    assert all(t.showlegend for t in first) and not any(t.showlegend for t in second)
    colours = {t.legendgroup: t.marker.color for t in first}
    assert all(colours[t.legendgroup] == t.marker.color for t in second)
    xyz = np.concatenate([np.stack([t.x, t.y, t.z], axis=1) for t in first])  # (N, 3)
    np.testing.assert_allclose(np.linalg.norm(xyz, axis=1), 1.0, atol=1e-3)


@pytest.mark.parametrize("num_classes", [10, 4])
def test_hypersphere_of_at_most_ten_classes_is_one_panel_not_a_repeat(num_classes):
    """10-class digits drew "All classes" twice: 10 random classes of 10 are all of them."""
    x, labels = _clusters(num_classes, 20)
    fig = _hypersphere_figure(x, labels, num_random_classes=10)
    assert {trace.scene for trace in fig.data} == {"scene"} and "scene2" not in fig.layout
    assert [a.text for a in fig.layout.annotations] == [f"All {num_classes} classes"]
    assert [t.name for t in fig.data if t.mode == "markers"] == [str(c) for c in range(num_classes)]
    assert f"{num_classes * 20} points of {num_classes} classes" in fig.layout.title.text
    assert len(set(t.marker.color for t in fig.data if t.mode == "markers")) == num_classes  # tab10: none alike


def test_hypersphere_random_classes_follow_the_seed():
    x, labels = _clusters(30, 5)

    def subset(seed):
        fig = _hypersphere_figure(x, labels, seed=seed)
        return [t.name for t in fig.data if t.mode == "markers" and t.scene == "scene2"]

    assert subset(0) == subset(0)
    assert subset(0) != subset(1)


def test_hypersphere_uses_class_names_and_distinct_colours_beyond_twenty_classes():
    x, labels = _clusters(40, 3)
    names = [f"class-{c}" for c in range(40)]
    fig = _hypersphere_figure(x, labels, class_names=names)
    first = [t for t in fig.data if t.mode == "markers" and t.scene == "scene"]
    assert [t.name for t in first] == names
    assert len({t.marker.color for t in first}) == 40


def test_hypersphere_html_is_offline_small_and_shares_plotly_js(tmp_path):
    x, labels = _clusters(100, 20)
    first = plot_hypersphere(x, labels, tmp_path / "plots" / "a_hypersphere.html")
    second = plot_hypersphere(x, labels, tmp_path / "plots" / "b_hypersphere.html", seed=1)
    written = sorted(p.name for p in first.parent.iterdir())
    assert written == ["a_hypersphere.html", "b_hypersphere.html", "plotly.min.js"]
    html = first.read_text()
    size, js_size = first.stat().st_size, (first.parent / "plotly.min.js").stat().st_size
    print(f"hypersphere HTML for 2000 points: {size / 1024:.1f} KiB; plotly.min.js: {js_size / 1024:.0f} KiB")
    assert size < 1_000_000
    assert "cdn.plot.ly" not in html and not re.search(r"src=\"https?:", html)
    assert '<script charset="utf-8" src="plotly.min.js"></script>' in html
    assert 'id="a_hypersphere"' in html
    traces = _traces_in_html(second)
    assert len(traces) == 100 + 10 + 2
    assert sum(t["mode"] == "markers" for t in traces) == 110


@pytest.mark.parametrize(
    "call, argument",
    [
        (lambda p: plot_tsne(np.zeros((10, 4)), np.zeros(9), p / "t.png"), "labels"),
        (lambda p: plot_hypersphere(np.zeros((10, 2)), np.zeros(10), p / "h.html"), "dimensions"),
        (lambda p: plot_alignment(np.ones((9, 4)), np.ones((9, 5)), np.zeros(9), p / "a.png"), "z1 and z2"),
        (lambda p: plot_training_curves({"run": [{"epoch": 1}]}, p / "c.png", "caption"), "metric 'loss'"),
        (lambda p: plot_alignment_uniformity([], p / "au.png", "caption"), "runs"),
        (lambda p: plot_accuracy_vs_epoch([], p / "acc.png"), "points"),
    ],
)
def test_bad_input_raises_value_error(tmp_path, call, argument):
    with pytest.raises(ValueError, match=argument):
        call(tmp_path)


def test_tsne_draws_classes_sampled_with_its_seed_not_the_first_ids(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(30), 8)  # 30 classes, more than the 20 drawn
    x = rng.normal(size=(len(labels), 6)) + labels[:, None]
    real_save, saved = plots._save, []
    monkeypatch.setattr(plots, "_save", lambda fig, path: saved.append(fig) or real_save(fig, path))
    for i, seed in enumerate((0, 0, 1)):
        plot_tsne(x, labels, tmp_path / f"t{i}.png", seed=seed)
    drawn = [[c.get_label() for c in fig.axes[0].collections] for fig in saved]
    assert len(drawn[0]) == 20 and drawn[0] == drawn[1]  # 20 classes, the same ones for the same seed
    assert drawn[0] != [str(c) for c in range(20)] and drawn[2] != drawn[0]  # not the first ids; seed-dependent


def test_sweep_figure_has_one_titled_panel_per_sweep_with_units_and_a_caption():
    sweeps = {"alpha": [dict(value=5.0, mean=80.0, std=1.0, n=1), dict(value=1.0, mean=85.0, std=0.5, n=3)],
              "temperature": [dict(value=0.05, mean=82.0, std=0.0, n=1), dict(value=0.07, mean=85.0, std=0.0, n=1)]}
    fig = plots.sweep_figure(sweeps, "Data: digits test split (smoke profile)")
    alpha, tau = fig.axes
    assert [alpha.get_title(), tau.get_title()] == ["alpha sweep", "temperature sweep"]
    assert alpha.get_xlabel() == "α (pull weight)" and alpha.get_ylabel() == "linear-probe test accuracy (%)"
    line = alpha.get_lines()[0]
    assert list(line.get_xdata()) == [1.0, 5.0] and list(line.get_ydata()) == [85.0, 80.0]  # sorted by value
    assert [t.get_text() for t in alpha.get_xticklabels()] == ["1", "5"]  # ticks at the swept values
    assert [t.get_text() for t in alpha.texts] == ["n=3"] and not tau.texts  # n beside the points with a std bar
    assert alpha.get_legend() is None  # one series: no legend unless the reference is drawn
    with_ref = plots.sweep_figure(sweeps, "c", reference={"alpha": [dict(value=1.0, test_acc=73.19)]})
    assert sorted(t.get_text() for t in with_ref.axes[0].get_legend().get_texts()) == [
        "reference (published CIFAR-100)", "this study"]
    assert _caption_text(fig).startswith("Data: digits test split (smoke profile)\n")
    untrained = plots.sweep_figure({"alpha": sweeps["alpha"], "beta": []}, "c").axes[1]
    assert not untrained.axison and [t.get_text() for t in untrained.texts] == ["no run of this sweep\nis recorded yet"]


def test_sweep_of_one_value_says_so_and_the_accuracy_axis_fits_the_data():
    """The smoke study's sweeps: λ had one value (drawn as a lone point on an axis running to 103%)."""
    headline = dict(value=0.07, mean=96.67, std=0.39, n=2)
    sweeps = {"alpha": [dict(headline, value=1.0), dict(value=5.0, mean=96.94, std=0.0, n=1)],
              "temperature": [dict(value=0.05, mean=96.67, std=0.0, n=1), headline],
              "hybrid_lambda": [dict(value=0.5, mean=97.78, std=0.0, n=1)]}
    fig = plots.sweep_figure(sweeps, "Data: digits test split (smoke profile)")
    alpha, tau, lam = fig.axes
    assert not lam.axison and not lam.lines and not lam.collections  # no axis, no point
    assert [t.get_text() for t in lam.texts] == [
        "one value only, no curve:\nλ (weight of SupCon in the hybrid) = 0.5\n97.8% test accuracy (1 seed)"]
    assert lam.get_title() == "hybrid_lambda sweep"
    assert len(tau.get_lines()[0].get_xdata()) == 2  # two values: their (flat) line
    for ax in (alpha, tau):
        low, high = ax.get_ylim()
        assert (low, high) == alpha.get_ylim()  # one accuracy range for every panel with a curve
        assert 95 < low < 96.67 - 0.39 and 96.94 < high < 98  # fits the data and its std bars, far below 100%


SMOKE_LABELS = ["LW-SupCRD α=1 β=10 + bank 512, bank pos. (ablation)", "Undistilled", "SupCon",
                "Hybrid λ=0.5 α=1 β=10", "LW-SupCRD α=1 β=10, instance pos.", "KD T=4", "LW-SupCRD α=1 β=10, student p",
                "CRD (ablation)", "CRD + bank 512 (ablation)", "CRD", "LW-SupCRD α=5 β=10", "LW-SupCRD α=1 β=1",
                "LW-SupCRD α=1 β=10", "LW-SupCRD α=1 β=10 τ=0.05", "LW-SupCRD α=1 β=10 (ablation)",
                "LW-SupCRD α=1 β=10 + bank 512 (ablation)"]  # the smoke study's 16 students, by accuracy


def _hue(colour):
    return colorsys.rgb_to_hls(*to_rgb(colour))[0]


def _assert_family_colours(styles):
    """Runs of one method family share a hue; families differ in hue; no two runs share colour and marker."""
    families = {}
    for label, (colour, marker) in styles.items():
        families.setdefault(label.split(" ")[0].rstrip(","), []).append((_hue(colour), colour, marker))
    for members in families.values():
        assert max(h for h, _, _ in members) - min(h for h, _, _ in members) < 0.02
    hues = sorted(members[0][0] for members in families.values())
    assert min(np.diff(hues)) > 0.02
    assert len({(c, m) for members in families.values() for _, c, m in members}) == len(styles)


def _overlaps(fig, legend, axes):
    """Titles of the ``axes`` whose drawn area the ``legend`` overlaps."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    box = legend.get_window_extent(renderer)
    return [ax.get_title() for ax in axes if box.overlaps(ax.get_window_extent(renderer))]


def test_training_curves_tell_sixteen_runs_apart_by_family_colour_and_variant_marker_and_dash():
    logs = {label: [{"epoch": e, "loss": 1.0 / e + i, "train_acc": 10.0 * e} for e in (1, 2, 3)]
            for i, label in enumerate(SMOKE_LABELS)}
    fig = plots.training_curves_figure(logs, "Data: digits train split (smoke profile); 1–2 seeds per run; 16 runs.")
    loss, acc = fig.axes
    lines = {line.get_label(): line for line in loss.get_lines()}
    assert len(lines) == 16
    assert len({(line.get_color(), line.get_marker(), line.get_linestyle()) for line in lines.values()}) == 16
    _assert_family_colours({label: (line.get_color(), line.get_marker()) for label, line in lines.items()})
    lw = [line for label, line in lines.items() if label.startswith("LW-SupCRD")]
    assert len({(line.get_marker(), line.get_linestyle()) for line in lw}) == 9  # variants: marker and dash
    assert acc.get_ylabel() == "train accuracy (%)" and loss.get_xlabel() == "epoch"
    assert "per step" in loss.get_ylabel()
    (legend,) = fig.legends
    texts = [t.get_text() for t in legend.get_texts()]
    assert sorted(texts) == sorted(SMOKE_LABELS) and texts[:9] == [l for l in SMOKE_LABELS if l.startswith("LW-")]
    assert _overlaps(fig, legend, fig.axes) == []  # the legend sits beside the panels, never on the curves
    caption = _caption_text(fig)
    assert caption.startswith("Data: digits train split (smoke profile)") and "not their levels" in caption


def test_training_curves_keep_accuracy_and_momentum_axes_within_their_range():
    log = [{"epoch": e, "train_acc": min(100.0, 60.0 + 20 * e), "momentum": 0.99} for e in range(1, 6)]
    fig = plots.training_curves_figure({"MoCo-v3 resnet18": log}, "c", metrics=("train_acc", "momentum"))
    acc, momentum = fig.axes
    assert acc.get_ylim()[1] <= 100.0 and momentum.get_ylim()[1] <= 1.0
    assert momentum.get_ylim()[0] < 0.99 < momentum.get_ylim()[1]


def test_run_styles_stay_distinct_past_twelve_runs_of_one_family():
    styles = plots.run_styles([f"LW-SupCRD variant {i}" for i in range(48)])
    assert len({(marker, dash) for _, marker, dash in styles.values()}) == 48


def test_alignment_uniformity_tells_sixteen_runs_apart_and_keeps_the_legend_off_the_data():
    rng = np.random.default_rng(0)
    runs = [dict(label=label, alignment=float(a), uniformity=float(u), test_acc=97.0)
            for label, a, u in zip(SMOKE_LABELS, rng.uniform(0.1, 0.8, 16), rng.uniform(-2.5, -0.9, 16))]
    fig = plots.alignment_uniformity_figure(runs, "Data: digits test split (smoke profile)")
    (ax,) = fig.axes
    styles = {c.get_label().rsplit(" (", 1)[0]: (to_hex(c.get_facecolor()[0]), c.get_paths()[0].vertices.tobytes())
              for c in ax.collections}
    assert len(styles) == 16
    _assert_family_colours(styles)
    assert _overlaps(fig, ax.get_legend(), fig.axes) == []

