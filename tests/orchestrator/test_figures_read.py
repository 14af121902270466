"""The PNGs a researcher reads: nothing hidden, nothing clipped, titles that name the defense."""
from __future__ import annotations

from matplotlib.backends.backend_agg import FigureCanvasAgg

from orchestrator import artifacts as art


def test_loss_curves_put_losses_and_accuracies_on_separate_axes_and_keep_pgd10_visible():
    steps = [1, 2, 3, 4]
    history = {"train/loss": [(s, 2.0 / s) for s in steps], "train/loss_gen": [(s, 1.0) for s in steps],
               "val/natural": [(s, 0.9) for s in steps], "val/pgd10": [(s, 0.3 + 0.1 * s) for s in steps],
               "val/worst": [(s, 0.3 + 0.1 * s) for s in steps]}  # worst == pgd10, as with two val columns
    fig = art.curves_figure(history, "t")
    losses, accs = fig.axes
    assert {ln.get_label() for ln in losses.lines} == {"train/loss", "train/loss_gen"}
    assert {ln.get_label() for ln in accs.lines} == {"val/natural", "val/pgd10", "val/worst"}
    assert accs.get_ylabel() == "accuracy" and losses.get_ylabel() == "loss"
    by = {ln.get_label(): ln for ln in accs.lines}
    pgd, worst = by["val/pgd10"], by["val/worst"]
    # the identical worst-case line lies under pgd10, wider, so both are seen
    assert pgd.get_zorder() > worst.get_zorder() and worst.get_linewidth() > pgd.get_linewidth()
    assert pgd.get_marker() not in (None, "None", "")


def test_pareto_labels_stay_inside_the_figure():
    rows = [{"trial_name": "l2lda-R1-D1-s0-a-rather-long-name", "matrix/natural": 0.99, "matrix/worst": 0.95},
            {"trial_name": "pgd10_at-s0-another-long-name-here", "matrix/natural": 0.999, "matrix/worst": 0.10},
            {"trial_name": "plain-s0-and-one-more-long-label", "matrix/natural": 0.20, "matrix/worst": 0.99},
            {"trial_name": "dominated", "matrix/natural": 0.5, "matrix/worst": 0.5}]
    fig = art.pareto_figure(rows)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    box = fig.axes[0].get_window_extent(renderer)  # inside the plot frame, not across it
    texts = [t for t in fig.axes[0].texts]
    # the Pareto front's three points are labelled with their whole names
    assert sorted(t.get_text() for t in texts) == sorted(r["trial_name"] for r in rows[:3])
    for t in texts:
        e = t.get_window_extent(renderer)
        assert e.x0 >= box.x0 and e.x1 <= box.x1 and e.y0 >= box.y0 and e.y1 <= box.y1, t.get_text()


def test_matrix_heatmap_title_names_the_defense_not_the_ray_id():
    m = {"profile": {"dataset": "mnist5k", "training": {"defense": "pgd10_at"}}}
    assert art.matrix_title(m, "L2LDATrainable_1c2f3_00000") == "pgd10_at on mnist5k"
    assert art.matrix_title(m, "export best/") == "pgd10_at on mnist5k · export best/"
    assert art.matrix_title({"profile": {}}, "export best/") == "export best/"
