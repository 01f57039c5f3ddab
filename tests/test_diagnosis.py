"""Every cause of a None, zero, NaN or Inf gradient in docs/diagnosis.md gets its diagnosis.

Tests are named after the cause's stable name (`test_left_tensorflow_...` for
docs/diagnosis.md#left-tensorflow); the last tests check that the catalog and the code agree.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import run

from tapemagic.tape import analysis
from tapemagic.tape.result import NONE, NONFINITE, STRUCTURAL, VALUE, ZERO

ROOT = Path(__file__).resolve().parent.parent
CATALOG = ROOT / "docs" / "diagnosis.md"


@pytest.fixture
def ns(ip):
    run(
        ip,
        "x = tf.constant(3.0); k = tf.constant(3); v = tf.Variable(2.0)\n"
        "frozen = tf.Variable(3.0, trainable=False); state = tf.Variable(0.0)\n"
        "zero = tf.constant(0.0); other = tf.constant(2.0)",
    )
    return ip


def tape(ip, cell: str):
    run(ip, "%%tape -q " + cell)
    return ip.user_ns["_tape"]


def only(result, target="y", source="x", order=1):
    d = result.find(target, source, order)
    assert d is not None, f"no derivative of {target} w.r.t. {source}: {result.derivatives}"
    return d


def test_unwatched_constant_made_in_the_cell(ns):
    r = tape(ns, "\nc = tf.constant(3.0)\ny = c * c")
    assert r.sources == []
    assert any("no tape watches a constant" in n and "-w c" in n for n in r.notes)


def test_unwatched_constant_outside_the_watch_list(ns):
    r = tape(ns, "-w x\ny = x * other")
    assert r.gradient("y", "other") is None
    why = r.why("y", "other")
    assert "other is a constant tensor" in why and "-w other" in why


def test_integer_source(ns):
    d = only(tape(ns, "\ny = k * k"), source="k")
    assert d.status == NONE
    assert "k is an integer tensor (int32)" in d.why and "tf.cast(k, tf.float32)" in d.why


def test_integer_source_left_out_is_named(ns):
    r = tape(ns, "-w x\ny = x * tf.cast(k, tf.float32)")
    assert r.sources == ["x"]
    assert any(
        n.startswith("not differentiated, integer: k (int32); tapes differentiate floats only")
        for n in r.notes
    ), r.notes


def test_left_tensorflow_through_numpy(ns):
    d = only(tape(ns, "\ny = tf.constant(np.square(x.numpy()))"))
    assert d.status == NONE
    assert d.why.startswith("line 1: np.square(x.numpy()) leaves TensorFlow")


def test_left_tensorflow_through_float(ns):
    d = only(tape(ns, "\nh = float(x) * 2.0\ny = tf.constant(h)"))
    assert "line 1: float(x) leaves TensorFlow" in d.why


def test_left_tensorflow_target_is_a_numpy_value(ns):
    d = only(tape(ns, "\ny = np.square(x.numpy())"))
    assert d.status == NONE
    assert "y is a numpy.float32, not a tensor" in d.why and "x.numpy()" in d.why


def test_left_tensorflow_through_numpy_imported_in_the_cell(ns):
    d = only(tape(ns, "\nimport numpy as npp\ny = tf.constant(npp.square(x.numpy()))"))
    assert d.status == NONE
    assert d.why.startswith("line 2: npp.square(x.numpy()) leaves TensorFlow"), d.why


@pytest.mark.parametrize(
    "body, why",
    [
        (
            "return tf.constant(np.square(t.numpy()))",
            "line 2 in f(): np.square(t.numpy()) leaves TensorFlow",
        ),
        ("return tf.round(t) * 2.0", "line 2 in f(): tf.round(t) is not differentiable"),
    ],
)
def test_left_tensorflow_or_non_differentiable_op_inside_a_called_function(ns, body, why):
    run(ns, f"def f(t):\n    {body}")
    d = only(tape(ns, "\ny = f(x)"))
    assert d.status == NONE
    assert d.why.startswith(why), d.why


def test_target_after_tape_in_a_later_cell(ns):
    r = tape(ns, "--persistent\ny = x * x")
    run(ns, "later = x * 3.0")
    assert r.gradient("later", "x") is None
    assert "later was not computed in the recorded cell" in r.why("later", "x")
    assert ns.user_ns["tape"].gradient(ns.user_ns["later"], ns.user_ns["x"]) is None


def test_target_after_tape_of_the_cells_own_tape(ns):
    cell = "\nwith tf.GradientTape() as t:\n    t.watch(x)\ny = x * x\ng = t.gradient(y, x)"
    r = tape(ns, cell)
    assert any("y is computed on line 3, after the block of tape t closed" in n for n in r.notes)


def test_variable_rebound_to_a_tensor(ns):
    r = tape(ns, "\nv = v + 1.0\ny = v * v")
    assert only(r, source="v").value.numpy() == pytest.approx(6.0)
    note = next(n for n in r.notes if "rebinds the name to a Tensor" in n)
    assert note.startswith("line 1: v was a tf.Variable") and "v.assign" in note


def test_stale_variable_after_rerunning_its_cell(ns):
    run(ns, "w = tf.Variable(1.0)")
    r = tape(ns, "\ny = w * w")
    run(ns, "w = tf.Variable(1.0)")
    new_w = ns.user_ns["w"]
    assert r.gradient("y", new_w) is None
    assert "w is a different object from the one the tape recorded" in r.why("y", new_w)
    assert r.gradient("y", "w").numpy() == pytest.approx(2.0)  # the recorded one still works


@pytest.mark.parametrize(
    "expr, culprit",
    [
        ("tf.cast(tf.argmax(tf.stack([x, 2 * x])), tf.float32)", "tf.argmax(tf.stack([x, 2 * x]))"),
        ("tf.round(x) * 2.0", "tf.round(x)"),
        ("tf.math.floor(x)", "tf.math.floor(x)"),
        ("x // 2.0", "x // 2.0"),
        ("tf.cast(tf.cast(x, tf.int32), tf.float32)", "tf.cast(x, tf.int32)"),
        ("tf.stop_gradient(x) * 2.0", "tf.stop_gradient(x)"),
        ("tf.cast(x > 1.0, tf.float32)", "x > 1.0"),
    ],
)
def test_non_differentiable_op(ns, expr, culprit):
    d = only(tape(ns, f"\ny = {expr}"))
    assert d.status == NONE
    assert d.why.startswith(f"line 1: {culprit} is not differentiable"), d.why


def test_non_differentiable_op_sign_gives_zeros_not_none(ns):
    d = only(tape(ns, "\ny = tf.sign(x)"))
    assert d.status == ZERO
    assert "tf.sign(x) has a zero gradient everywhere" in d.why


def test_no_registered_gradient(ns):
    cell = (
        "\nimg = tf.reshape(tf.range(12.0), (2, 2, 3)) * x\ny = tf.image.adjust_contrast(img, 2.0)"
    )
    d = only(tape(ns, cell))
    assert d.status == NONE
    assert "no gradient is registered for the op AdjustContrastv2" in d.why
    assert "tf.custom_gradient" in d.why


def test_untrainable_variable(ns):
    r = tape(ns, "-w x\ny = x * frozen")
    assert r.gradient("y", "frozen") is None
    assert "frozen is a Variable with trainable=False" in r.why("y", "frozen")
    r = tape(ns, "\ny = frozen * frozen")  # watched on purpose by default, with a note
    assert only(r, source="frozen").value.numpy() == pytest.approx(6.0)
    assert any("frozen has trainable=False" in n for n in r.notes)


def test_nothing_watched_on_a_layer_not_built_yet(ns):
    run(ns, "layer = tf.keras.layers.Dense(1)")
    cell = (
        "\nwith tf.GradientTape(watch_accessed_variables=False) as t:\n"
        "    t.watch(layer.trainable_variables)\n"
        "    out = layer(tf.ones((1, 2)) * x)\n"
        "g = t.gradient(out, layer.trainable_variables)"
    )
    r = tape(ns, "-w x" + cell)
    assert ns.user_ns["g"] == [None, None]  # what TF gives: the kernel and bias were not watched
    start = "line 2: t.watch(layer.trainable_variables) on a tape with watch_accessed_variables"
    assert any(n.startswith(start) and "empty until its first call builds it" in n for n in r.notes)


def test_state_on_path(ns):
    d = only(tape(ns, "-w x\nstate.assign(x * 2.0)\ny = state * 3.0"))
    assert d.status == NONE
    assert d.why.startswith("line 1: state.assign(x * 2.0) writes state")


def test_control_flow_only_in_an_if(ns):
    cell = "-w x\nif x > 0:\n    y = tf.constant(1.0)\nelse:\n    y = tf.constant(-1.0)"
    d = only(tape(ns, cell))
    assert d.why.startswith("x is used only in control flow (line 1: if x > 0:)")


def test_control_flow_only_as_a_loop_count(ns):
    cell = "-w x\nacc = tf.constant(0.0)\nfor i in range(int(x)):\n    acc = acc + 1.0"
    d = only(tape(ns, cell), target="acc")
    assert d.why.startswith("x is used only in control flow (line 2: for i in range(int(x)):)")


def test_outer_tape_closed_before_the_inner_gradient(ns):
    cell = (
        "-w x\nwith tf.GradientTape() as t2:\n    t2.watch(x)\n"
        "    with tf.GradientTape() as t1:\n        t1.watch(x)\n        y = x ** 2\n"
        "dy = t1.gradient(y, x)\nd2 = t2.gradient(dy, x)"
    )
    r = tape(ns, cell)
    assert ns.user_ns["d2"] is None
    assert any(
        n.startswith("line 6: t1.gradient(...) runs after the block of tape t2") for n in r.notes
    )


def test_structural_zero_shows_as_zero(ns):
    d = only(tape(ns, "-o 2\ny = 3.0 * x"), order=2)
    assert d.status == STRUCTURAL
    assert d.value.numpy() == 0.0
    assert "the order-2 derivative is 0 (shown so)" in d.why


def test_structural_zero_carries_to_higher_orders(ns):
    r = tape(ns, "-o 3\ny = 3.0 * x")
    assert [d.status for d in r.derivatives] == [VALUE, STRUCTURAL, STRUCTURAL]
    assert float(r.gradient("y", "x", order=3)) == 0.0
    assert only(r, order=3).why == "order 2 is already 0, so order 3 is 0"
    assert float(ns.run_line_magic("grad", "3.0 * x --at x=2.0 -o 3 -q")) == 0.0


def test_structural_zero_keeps_a_caveat_for_ops_without_higher_gradients(ns):
    run(ns, "v4 = tf.constant([1., 2., 3., 4.])")
    cell = "-o 2\nf = tf.reduce_sum(tf.image.resize(tf.reshape(v4, (1, 2, 2, 1)), (4, 4)) ** 2)"
    d = only(tape(ns, cell), target="f", source="v4", order=2)
    if d.status == NONE:  # TF 2.16/2.17 raise for the missing gradient instead of a silent None
        assert "no gradient is registered for the op ResizeBilinearGrad" in d.why
    else:  # later TF returns None silently: never claimed zero without the caveat
        assert d.status == STRUCTURAL
        assert "unless an op on the path has no gradient of order 2 (e.g. tf.image.resize)" in d.why


def test_structural_zero_no_path_at_order_one(ns):
    d = only(tape(ns, "-w x,other\ny = other * 2.0"))
    assert d.status == NONE
    assert d.why.startswith("y does not depend on x: nothing in the cell computes it from x")


def test_summed_targets_non_scalar_target(ns):
    d = only(tape(ns, "\ny = tf.stack([x * x, x ** 3])"))
    assert d.summed and d.notation == "∂Σy/∂x"
    assert d.value.numpy() == pytest.approx(33.0)  # 2x + 3x^2 at 3


def test_summed_targets_list_target(ns):
    d = only(tape(ns, "-t y\ny = [x * x, x ** 3]"))
    assert d.summed and d.notation == "∂Σy/∂x"
    assert float(d.value) == 33.0


def test_summed_targets_gradient_of_a_list(ns):
    cell = (
        "\nwith tf.GradientTape() as t:\n    t.watch(x)\n    a = x * x\n    b = x ** 3\n"
        "g = t.gradient([a, b], x)"
    )
    r = tape(ns, cell)
    assert any("silently sums the gradients of its 2 targets" in n for n in r.notes)


def test_nan_from_where(ns):
    d = only(tape(ns, "\ny = tf.where(zero > 0, tf.math.log(zero), 0.)"), source="zero")
    assert d.status == NONFINITE
    assert "double where" in d.why and "tf.math.log(zero)" in d.why and "zero = 0" in d.why


def test_infinite_derivative_of_a_singular_op(ns):
    d = only(tape(ns, "\ny = zero ** 0.5"), source="zero")
    assert d.status == NONFINITE
    assert d.why.startswith(
        "line 1: zero ** 0.5 has an infinite or undefined derivative at zero = 0"
    )


def test_infinite_derivative_of_a_nan_target(ns):
    d = only(tape(ns, "\ny = tf.sqrt(-zero - 1.0)"), source="zero")
    assert d.status == NONFINITE
    assert d.why.startswith("y itself is NaN or Inf at this point (line 1)")


def test_why_is_none_for_a_proper_gradient(ns):
    r = tape(ns, "\ny = x * x")
    assert r.why("y", "x") is None


def test_no_gradient_for_any_variable():
    import tensorflow as tf

    from tapemagic import Trainer

    a = tf.Variable(1.0)
    X, Y = tf.constant([1.0, 2.0, 3.0]), tf.constant([2.0, 4.0, 6.0])
    with pytest.raises(ValueError) as err:  # Keras would say only "No gradients provided..."
        Trainer(
            params={"a": a},
            predict=lambda x: tf.constant(x.numpy() * a.numpy()),  # leaves TensorFlow
            loss=lambda y, p: tf.reduce_sum((y - p) ** 2),
            data=(X, Y),
        )
    assert str(err.value).startswith(
        "no gradient reaches any of a from the loss: predict must compute with these Variables "
        "through TensorFlow ops"
    )


# -- docs/diagnosis.md and the code agree -------------------------------------------------
def test_python_function_py_function_leaving_tensorflow_gives_explained_zeros(ns):
    d = only(tape(ns, "-w x\ny = tf.py_function(lambda a: a.numpy() * 2.0, [x], tf.float32)"))
    assert d.status == ZERO  # what TF gives: zeros, not None
    assert d.why.startswith(
        "line 1: tf.py_function(lambda a: a.numpy() * 2.0, [x], tf.float32) runs Python"
    )
    assert "a.numpy() leaves TensorFlow inside it" in d.why and "tf.custom_gradient" in d.why


def test_python_function_py_function_of_a_named_function(ns):
    run(ns, "def halve(a):\n    return np.float32(a.numpy() / 2)")
    d = only(tape(ns, "-w x\ny = tf.py_function(halve, [x], tf.float32)"))
    assert d.status in (ZERO, NONE) and "np.float32(a.numpy() / 2) leaves TensorFlow" in d.why


def test_python_function_numpy_function(ns):
    d = only(tape(ns, "-w x\ny = tf.numpy_function(lambda a: a * 2.0, [x], tf.float32)"))
    assert d.status == NONE
    assert d.why.startswith("line 1: tf.numpy_function(lambda a: a * 2.0, [x], tf.float32) runs")
    assert "NumPy code, which has no gradient" in d.why


def test_untrainable_variable_keras_non_trainable_weight(ns):
    run(ns, "bn = tf.keras.layers.BatchNormalization()\nbn.build((None, 2))")
    run(ns, "inputs = tf.constant([[1.0, 2.0], [3.0, 5.0]])")
    r = tape(ns, "-t y\ny = tf.reduce_sum(bn(inputs, training=False))")
    why = r.why("y", ns.user_ns["bn"].moving_mean)
    assert "is a Keras non-trainable weight: tapes do not watch it unless told to" in why
    assert "does not depend" not in why


def test_untrainable_variable_reached_through_an_object(ns):
    run(ns, "class Box:\n    pass\nbox = Box()\nbox.fz = tf.Variable(2.0, trainable=False)")
    r = tape(ns, "-w x\ny = x * box.fz")
    d = r.find("y", ns.user_ns["box"].fz)
    assert d.why.startswith(f"{d.source} is a Variable with trainable=False")
    assert "-w" not in d.why  # -w takes names: no fix offered that could not work
    if d.source == "Variable":  # no name reaches it
        assert "tape.watch(...) on the object the cell reaches it by" in d.why
    else:
        assert f"tape.watch({d.source}) in the cell" in d.why


def test_integer_source_used_only_as_an_index_gets_no_note(ns):
    run(ns, "vec = tf.constant([1.0, 2.0, 3.0]); i = tf.constant(1); idx = tf.constant([0, 2])")
    r = tape(ns, "-w vec\ny = vec[i] * 2.0\nz = tf.reduce_sum(tf.gather(vec, idx))")
    assert not any("not differentiated, integer" in n for n in r.notes), r.notes
    r = tape(ns, "-w vec\ny = vec * tf.cast(i, tf.float32)")  # a value: the note stays
    assert any(n.startswith("not differentiated, integer: i (int32)") for n in r.notes)


@pytest.mark.parametrize(
    "cell", ["y = tf.nn.relu(zero)", "y = tf.abs(zero)", "y = tf.nn.relu(zero) + tf.abs(zero)"]
)
def test_non_differentiable_op_no_false_alarm_at_a_kink(ns, cell):
    d = only(tape(ns, "-w zero\n" + cell), source="zero")
    assert d.status == ZERO and d.why is None


def test_nan_from_where_no_false_alarm_on_a_safe_where(ns):
    cell = "-w zero\ny = tf.where(zero > 0, tf.math.log(tf.where(zero > 0, zero, 1.0)), 0.0)"
    r = tape(ns, cell)
    d = only(r, source="zero")
    assert d.status == ZERO and d.why is None and r.why("y", "zero") is None
    assert not r.notes


def anchors(markdown: str) -> set[str]:
    """The anchors of a Markdown page's headings, as GitHub makes them."""
    found = set()
    for heading in re.findall(r"^#+ +(.+?) *$", markdown, flags=re.MULTILINE):
        text = re.sub(r"[^\w\- ]", "", heading.lower().replace("`", ""))
        found.add(text.replace(" ", "-"))
    return found


def catalog() -> dict[str, int]:
    """Stable name -> number, from the catalog's `## name` headings and `**N.**` lines."""
    entry = r"^## ([a-z0-9]+(?:-[a-z0-9]+)+)\n\n\*\*(\d+)\.\*\*"
    entries = re.findall(entry, CATALOG.read_text(), flags=re.MULTILINE)
    return {name: int(number) for name, number in entries}


def citations() -> dict[str, list[str]]:
    """Every `docs/diagnosis.md#<name>` cited in the package and the tests -> where."""
    cited: dict[str, list[str]] = {}
    for folder in ("tapemagic", "tests"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for name in re.findall(r"docs/diagnosis\.md#([\w-]+)", path.read_text()):
                cited.setdefault(name, []).append(str(path.relative_to(ROOT)))
    return cited


def test_catalog_numbers_its_causes_one_to_n():
    numbers = sorted(catalog().values())
    assert numbers == list(range(1, len(numbers) + 1)) and len(numbers) >= 18, numbers


def test_every_name_the_code_cites_is_in_the_catalog():
    cited = citations()
    assert {"left-tensorflow", "non-differentiable-op", "state-on-path"} <= set(cited)
    assert "tapemagic/tape/diagnosis.py" in cited["left-tensorflow"]
    headings = anchors(CATALOG.read_text())
    missing = {name: where for name, where in cited.items() if name not in headings}
    assert not missing, f"cited but not a heading of docs/diagnosis.md: {missing}"


def test_every_cause_in_the_catalog_has_a_test_named_after_it():
    tests = re.findall(r"^def (test_\w+)", Path(__file__).read_text(), flags=re.MULTILINE)
    prefixes = {name: "test_" + name.replace("-", "_") for name in catalog()}
    untested = [n for n, p in prefixes.items() if not any(t.startswith(p) for t in tests)]
    assert not untested, f"no test_<name> in {Path(__file__).name} for: {untested}"


@pytest.mark.parametrize(
    "name, cell",
    [
        (
            "target-after-tape",
            "with tf.GradientTape() as t:\n    t.watch(x)\ny = x * x\ng = t.gradient(y, x)",
        ),
        (
            "nothing-watched",
            "with tf.GradientTape(watch_accessed_variables=False) as t:\n"
            "    t.watch(layer.trainable_variables)\n    out = layer(x)",
        ),
        (
            "outer-tape-closed",
            "with tf.GradientTape() as t2:\n    with tf.GradientTape() as t1:\n        y = x * x\n"
            "    pass\ndy = t1.gradient(y, x)",
        ),
        (
            "summed-targets",
            "with tf.GradientTape() as t:\n    a = x * x\ng = t.gradient([a, a], x)",
        ),
    ],
)
def test_lints_carry_their_catalog_number(name, cell):
    assert [lint.cause for lint in analysis.analyse(cell).lints] == [catalog()[name]]
