"""notebooks/05_gradient_health.ipynb, executed in a fresh kernel: each broken model is caught
and explained, and the fixed one trains with no finding."""

from __future__ import annotations

import pytest
from test_notebooks import execute, output_of


@pytest.fixture(scope="module")
def health():
    return execute("05_gradient_health.ipynb")


def test_the_deep_sigmoid_stack_vanishes(health):
    out = output_of(health, "deep = Trainer(")
    assert out.startswith("[vanishing] epoch 2: layer dense's gradient norm")
    assert "use ReLU-family activations" in out and "[update-too-large]" not in out
    norms = output_of(health, "table = deep.history.gradients").split()
    first, last = float(norms[1]), float(norms[-1])
    assert norms[0] == "dense" and last / first > 1e5  # orders of magnitude, as the text says


def test_the_frozen_layer_gets_no_gradient_and_its_cause(health):
    out = output_of(health, "frozen = mlp(32, 32)")
    assert out.count("[no-gradient]") == 1
    assert "is frozen (trainable=False) but on the loss's path" in out
    assert ".trainable = True before making the Trainer" in out


def test_the_large_rate_explodes_the_update_ratio(health):
    out = output_of(health, "hot = Trainer(")
    assert "[update-too-large] epoch 2:" in out and "the learning rate is too high" in out
    assert "[exploding]" in out and "clip gradients" in out


def test_the_fixed_model_is_clean(health):
    out = output_of(health, "fixed = Trainer(")
    assert out.startswith("no findings")
    ratios = [float(r) for r in out.split("update ratios:")[1].split("\n")[0].split(",")]
    assert all(1e-4 <= r <= 1e-2 for r in ratios)
    before, after = (float(v) for v in out.split("loss ")[1].split(" -> "))
    assert after < before / 10
