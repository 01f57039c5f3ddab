"""Notebook 03 (the loss landscape), executed top to bottom in a fresh kernel; its outputs
read as a user reads them."""

from __future__ import annotations

import re

import numpy as np
import pytest
from test_notebooks import execute, output_of

X = [1.0, 4.0, 6, 3, 3, 4, 5, 6, 7]
Y = [0.25, 1.2, 0.79, 0.52, 1.6, 1.7, 1.9, 2, 2]
SGD_LOSSES = [19.457, 8.134604, 4.186867, 2.8102624, 2.330071, 2.1624107]
ADAM_LOSSES = [19.457, 10.991247, 5.402445, 2.563472, 2.0541918]


@pytest.fixture(scope="module")
def descent():
    return execute("03_descent.ipynb")


def test_no_cell_failed(descent):
    for cell in descent.cells:
        if cell.cell_type == "code":
            errors = [o for o in cell.outputs if o.output_type == "error"]
            assert not errors, (cell.source[:60], errors[0].evalue if errors else "")


def test_the_seed_landscape_minimum_is_least_squares(descent):
    text = output_of(descent, "panel.run(300)")
    slope, intercept = np.polyfit(np.array(X), np.array(Y), 1)
    assert f"minimum: a={slope:.4f} b={intercept:.4f}" in text
    assert f"least squares: a={slope:.4f} b={intercept:.4f}" in text
    assert "grid (61, 61)" in text and "points (thinned) up to epoch 300" in text
    panel_bundle = output_of(descent, "X = tf.constant", "text/plain")
    assert panel_bundle.startswith("TrainingPanel: ")
    figure = output_of(descent, "fig, ax = plt.subplots", "image/png")
    assert figure  # the user's own contour plot of the arrays


def test_too_large_a_rate_zig_zags_then_pauses_on_nan(descent):
    zig = output_of(descent, "steep.run(40)")
    values = [float(v) for v in re.search(r"\[(.*)\]", zig).group(1).split()]
    steps = np.diff([0.0, *values])
    assert np.all(steps[:-1] * steps[1:] < 0), values  # b goes up, down, up: a zig-zag
    nan = output_of(descent, "steep.trainer.learning_rate = 0.006")
    assert "TrainingPanel: paused by a NaN/Inf at epoch" in nan
    assert "Try a smaller learning rate (now 0.006)" in nan


def test_the_race_gives_the_tutorials_tables(descent):
    text = output_of(descent, "histories = race.run(5)")
    tables = {
        label: [float(v) for v in values.split(", ")]
        for label, values in re.findall(r"(\S+ [\d.]+): \[(.*)\]", text)
    }
    assert tables["adam 0.07"] == pytest.approx(ADAM_LOSSES, rel=1e-5)
    assert tables["sgd 0.001"] == pytest.approx(SGD_LOSSES[:5], rel=1e-5)
    final = output_of(descent, "histories = race.run(200)")
    losses = dict(re.findall(r"(\S+ [\d.]+): loss after 205 epochs ([\d.]+)", final))
    assert float(losses["adam 0.07"]) < float(losses["sgd 0.001"])


def test_the_mlp_slice_says_its_subset_and_directions(descent):
    text = output_of(descent, "mlp_panel.run(4)")
    assert (
        "random: loss on a fixed subset: the first 512 of 4,000 samples; filter-normalised" in text
    )
    assert (
        "pca: loss on a fixed subset: the first 512 of 4,000 samples; PCA directions explain"
        in text
    )
