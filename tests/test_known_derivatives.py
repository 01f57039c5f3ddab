"""Functions with known derivatives, differentiated through the magics.

Every case runs as a user would run it, through `%%tape` cells and `%grad` lines in the
shared IPython shell, and is compared with its derivative written out by hand in NumPy
(float64, at the float32-rounded point): TF is never compared with TF.

What the nested tapes give at order 2 is the gradient of the sum of the order-1
derivative. For an elementwise function that is the elementwise second derivative; for
a scalar target of a vector source it is the column sum of the Hessian H, whose full
value `%%tape --hessian` gives.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from conftest import run  # noqa: E402

from tapemagic.tape.result import STRUCTURAL, VALUE, ZERO  # noqa: E402

F32 = np.float32


# -- helpers ------------------------------------------------------------------------------
def as64(value: Any) -> np.ndarray:
    """The value as TF sees it (rounded to float32), then widened for the analytic math."""
    return np.asarray(value, dtype=F32).astype(np.float64)


def literal(value: Any) -> str:
    """A float32 value as a Python literal without spaces, for `x = ...` and `--at x=...`."""
    return json.dumps(np.asarray(value, dtype=F32).tolist(), separators=(",", ":"))


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def numpy_of(value: Any) -> np.ndarray:
    assert value is not None, "the derivative is None"
    return np.asarray(value.numpy() if hasattr(value, "numpy") else value)


def close(actual: Any, expected: Any, tol: dict[str, float]) -> None:
    actual = numpy_of(actual)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"shape {actual.shape}, expected {expected.shape}"
    np.testing.assert_allclose(actual, expected, **tol)


def expected_status(expected: Any) -> set[str]:
    """A derivative that is 0 here may be computed zeros or TF's None shown as 0."""
    return {ZERO, STRUCTURAL} if not np.any(expected) else {VALUE}


def derivative(ip, target: str, source: str, order: int = 1, kind: str = "gradient"):
    d = ip.user_ns["_tape"].find(target, source, order, kind)
    assert d is not None, f"no {kind} of {target} w.r.t. {source} at order {order}"
    assert (d.order, d.kind) == (order, kind)
    return d


def bind(ip, **values: Any) -> None:
    """Bind float32 tensors in the shell the way a user would, with a plain cell."""
    run(ip, "\n".join(f"{name} = tf.constant({literal(v)})" for name, v in values.items()))


def bind_constants(ip, constants: dict[str, np.ndarray]) -> None:
    """NumPy constants: read by the cell, but not sources of `%%tape` by default."""
    for name, value in constants.items():
        ip.user_ns[name] = np.asarray(value, dtype=F32)


TOL = {"rtol": 1e-5, "atol": 1e-6}


# -- elementwise functions of a scalar (and, all points at once, of a vector) ----------
@dataclass(frozen=True)
class Elementwise:
    name: str
    expr: str  # TF expression of x
    d1: Callable[[np.ndarray], np.ndarray]  # f'(x)
    d2: Callable[[np.ndarray], np.ndarray]  # f''(x)
    points: tuple[float, ...]
    tol: dict[str, float] = field(default_factory=lambda: TOL)


ELEMENTWISE = [
    Elementwise("square", "x**2", lambda x: 2 * x, lambda x: 2 + 0 * x, (-1.5, 0.5, 2.0)),
    Elementwise("cube", "x**3", lambda x: 3 * x**2, lambda x: 6 * x, (-1.5, 0.5, 2.0)),
    Elementwise("sin", "tf.sin(x)", np.cos, lambda x: -np.sin(x), (-1.0, 0.5, 2.5)),
    Elementwise("cos", "tf.cos(x)", lambda x: -np.sin(x), lambda x: -np.cos(x), (-1.0, 0.5, 2.5)),
    Elementwise("exp", "tf.exp(x)", np.exp, np.exp, (-1.0, 0.5, 2.0)),
    Elementwise("log", "tf.math.log(x)", lambda x: 1 / x, lambda x: -1 / x**2, (0.5, 1.0, 3.0)),
    Elementwise(
        "sqrt",
        "tf.sqrt(x)",
        lambda x: 0.5 / np.sqrt(x),
        lambda x: -0.25 * x**-1.5,
        (0.25, 1.0, 4.0),
    ),
    Elementwise(
        "tanh",
        "tf.tanh(x)",
        lambda x: 1 - np.tanh(x) ** 2,
        lambda x: -2 * np.tanh(x) * (1 - np.tanh(x) ** 2),
        (-1.0, 0.5, 2.0),
    ),
    Elementwise(
        "sigmoid",
        "tf.sigmoid(x)",
        lambda x: sigmoid(x) * (1 - sigmoid(x)),
        lambda x: sigmoid(x) * (1 - sigmoid(x)) * (1 - 2 * sigmoid(x)),
        (-1.0, 0.5, 2.0),
    ),
    Elementwise(
        "softplus",
        "tf.nn.softplus(x)",
        sigmoid,
        lambda x: sigmoid(x) * (1 - sigmoid(x)),
        (-1.0, 0.5, 2.0),
    ),
    Elementwise("reciprocal", "1 / x", lambda x: -1 / x**2, lambda x: 2 / x**3, (-2.0, 0.5, 1.5)),
    Elementwise(
        "x_exp_x",
        "x * tf.exp(x)",
        lambda x: (1 + x) * np.exp(x),
        lambda x: (2 + x) * np.exp(x),
        (-1.0, 0.5, 2.0),
    ),
    Elementwise("relu", "tf.nn.relu(x)", lambda x: 1 + 0 * x, lambda x: 0 * x, (0.5, 2.0)),
    Elementwise("abs", "tf.abs(x)", np.sign, lambda x: 0 * x, (-1.5, 2.0)),
    Elementwise(
        "pow_1.5",
        "tf.pow(x, 1.5)",
        lambda x: 1.5 * x**0.5,
        lambda x: 0.75 * x**-0.5,
        (0.25, 1.0, 2.0),
    ),
    Elementwise(
        "sin_of_square",
        "tf.sin(x**2)",
        lambda x: 2 * x * np.cos(x**2),
        lambda x: 2 * np.cos(x**2) - 4 * x**2 * np.sin(x**2),
        (-1.0, 0.5, 1.5),
    ),
    Elementwise(
        "gaussian",
        "tf.exp(-x**2 / 2)",
        lambda x: -x * np.exp(-(x**2) / 2),
        lambda x: (x**2 - 1) * np.exp(-(x**2) / 2),
        (-1.0, 0.5, 2.0),
    ),
    Elementwise(
        "log_1_plus_exp",
        "tf.math.log(1 + tf.exp(x))",
        sigmoid,
        lambda x: sigmoid(x) * (1 - sigmoid(x)),
        (-1.0, 0.5, 2.0),
    ),
]

ELEMENTWISE_POINTS = [
    pytest.param(case, p, id=f"{case.name}@{p}") for case in ELEMENTWISE for p in case.points
]
ELEMENTWISE_CASES = [pytest.param(case, id=case.name) for case in ELEMENTWISE]


@pytest.mark.parametrize(("case", "point"), ELEMENTWISE_POINTS)
def test_elementwise_tape(ip, case: Elementwise, point: float):
    bind(ip, x=point)
    run(ip, f"%%tape -o 2 -q\nout = {case.expr}")
    tape = ip.user_ns["_tape"]
    assert (tape.targets, tape.sources) == (["out"], ["x"])
    x = as64(point)
    for order, fn in ((1, case.d1), (2, case.d2)):
        d = derivative(ip, "out", "x", order)
        close(tape.gradient("out", "x", order), fn(x), case.tol)
        assert d.status in expected_status(fn(x)), d.status
        assert d.summed is False


@pytest.mark.parametrize(("case", "point"), ELEMENTWISE_POINTS)
def test_elementwise_grad(ip, case: Elementwise, point: float):
    x = as64(point)
    for order, fn in ((1, case.d1), (2, case.d2)):
        value = ip.run_line_magic("grad", f"{case.expr} --at x={literal(point)} -o {order} -q")
        close(value, fn(x), case.tol)


@pytest.mark.parametrize("case", ELEMENTWISE_CASES)
def test_elementwise_vector(ip, case: Elementwise):
    """All points at once: a non-scalar target, so the gradient is that of its sum."""
    bind(ip, x=case.points)
    run(ip, f"%%tape -o 2 -q\nout = {case.expr}")
    x = as64(case.points)
    d = derivative(ip, "out", "x", 1)
    assert d.summed is True and d.kind == "gradient"
    close(d.value, case.d1(x), case.tol)
    close(derivative(ip, "out", "x", 2).value, case.d2(x), case.tol)


# -- scalar functions of a vector or matrix: gradient and Hessian ----------------------
@dataclass(frozen=True)
class Scalar:
    name: str
    expr: str  # TF expression of `source` (and of the constants)
    source: str
    grad: Callable[..., np.ndarray]  # (x, **constants) -> gradient, shaped like x
    hessian: Callable[..., np.ndarray]  # (x, **constants) -> (n, n), row-major flattening
    points: tuple[Any, ...]
    constants: dict[str, Any] = field(default_factory=dict)
    tol: dict[str, float] = field(default_factory=lambda: TOL)


A3 = [[2.0, 1.0, 0.0], [-1.0, 3.0, 0.5], [0.5, 0.0, 1.0]]  # not symmetric
ONEHOT = [0.0, 1.0, 0.0]
XIN = [0.5, -1.0, 2.0]
V2 = [1.5, -0.5]
B2 = [0.1, -0.2]
VECTORS = ([0.5, -1.0, 2.0], [1.0, 0.25, -0.5])
MATRICES = ([[1.0, 2.0], [3.0, 5.0]], [[0.5, -1.0], [2.0, 1.5]])


def prod_hessian(x):
    p = np.prod(x)
    h = p / np.outer(x, x)
    np.fill_diagonal(h, 0.0)
    return h


def norm_hessian(x):
    r = np.linalg.norm(x)
    return (np.eye(len(x)) - np.outer(x, x) / r**2) / r


def det_hessian(x):
    """det [[a, b], [c, d]] = ad - bc: constant Hessian in (a, b, c, d)."""
    return np.array([[0, 0, 0, 1], [0, 0, -1, 0], [0, -1, 0, 0], [1, 0, 0, 0]], float)


def softmax_hessian(x, **_):
    s = softmax(x)
    return np.diag(s) - np.outer(s, s)


def net_hidden(w, xin, b):
    return np.tanh(w @ xin + b)


def net_grad(w, xin, v, b):
    h = net_hidden(w, xin, b)
    return np.outer(v * (1 - h**2), xin)


def net_hessian(w, xin, v, b):
    """out = v . tanh(W xin + b): d2/dW_ij dW_kl = [i == k] v_i tanh''(z_i) xin_j xin_l."""
    h = net_hidden(w, xin, b)
    curvature = v * -2 * h * (1 - h**2)
    return np.einsum("ik,i,j,l->ijkl", np.eye(len(v)), curvature, xin, xin).reshape(w.size, w.size)


SCALARS = [
    Scalar(
        "reduce_sum_squares",
        "tf.reduce_sum(x**2)",
        "x",
        lambda x: 2 * x,
        lambda x: 2 * np.eye(x.size),
        VECTORS,
    ),
    Scalar(
        "reduce_mean_squares",
        "tf.reduce_mean(x**2)",
        "x",
        lambda x: 2 * x / x.size,
        lambda x: 2 * np.eye(x.size) / x.size,
        VECTORS,
    ),
    Scalar(
        "reduce_prod",
        "tf.reduce_prod(x)",
        "x",
        lambda x: np.prod(x) / x,
        prod_hessian,
        VECTORS,
    ),
    Scalar(
        "reduce_logsumexp",
        "tf.reduce_logsumexp(x)",
        "x",
        softmax,
        softmax_hessian,
        VECTORS,
    ),
    Scalar(
        "quadratic_form",
        "tf.tensordot(x, tf.linalg.matvec(A, x), 1)",
        "x",
        lambda x, A: (A + A.T) @ x,
        lambda x, A: A + A.T,
        VECTORS,
        {"A": A3},
    ),
    Scalar("norm", "tf.norm(x)", "x", lambda x: x / np.linalg.norm(x), norm_hessian, VECTORS),
    Scalar(
        "det_2x2",
        "tf.linalg.det(X)",
        "X",
        lambda x: np.linalg.det(x) * np.linalg.inv(x).T,
        det_hessian,
        MATRICES,
        tol={"rtol": 1e-5, "atol": 1e-5},
    ),
    Scalar(
        "trace",
        "tf.linalg.trace(X)",
        "X",
        lambda x: np.eye(len(x)),
        lambda x: np.zeros((x.size, x.size)),
        MATRICES,
    ),
    Scalar(
        "softmax_xent_log_softmax",
        "-tf.reduce_sum(onehot * tf.nn.log_softmax(z))",
        "z",
        lambda z, onehot: softmax(z) - onehot,
        softmax_hessian,
        VECTORS,
        {"onehot": ONEHOT},
    ),
    Scalar(
        "softmax_xent_with_logits",
        "tf.nn.softmax_cross_entropy_with_logits(onehot, z)",
        "z",
        lambda z, onehot: softmax(z) - onehot,
        softmax_hessian,
        VECTORS,
        {"onehot": ONEHOT},
    ),
    Scalar(
        "two_layer_net_wrt_W",
        "tf.tensordot(v, tf.tanh(tf.linalg.matvec(W, xin) + b), 1)",
        "W",
        net_grad,
        net_hessian,
        ([[0.3, -0.2, 0.1], [0.5, 0.4, -0.3]], [[-0.1, 0.2, 0.25], [0.0, -0.4, 0.1]]),
        {"xin": XIN, "v": V2, "b": B2},
    ),
]

SCALAR_POINTS = [
    pytest.param(case, i, id=f"{case.name}@{i}")
    for case in SCALARS
    for i in range(len(case.points))
]


def scalar_expected(case: Scalar, i: int):
    """Point, gradient, Hessian (n, n) and the order-2 nested-tape value (H's column sums)."""
    x = as64(case.points[i])
    constants = {k: as64(v) for k, v in case.constants.items()}
    grad = case.grad(x, **constants)
    hessian = case.hessian(x, **constants)
    return x, grad, hessian, hessian.sum(axis=0).reshape(x.shape)


@pytest.mark.parametrize(("case", "i"), SCALAR_POINTS)
def test_scalar_target_tape(ip, case: Scalar, i: int):
    bind_constants(ip, case.constants)
    bind(ip, **{case.source: case.points[i]})
    run(ip, f"%%tape -o 2 -q\nout = {case.expr}")
    tape = ip.user_ns["_tape"]
    assert (tape.targets, tape.sources) == (["out"], [case.source])
    _, grad, _, second = scalar_expected(case, i)
    d = derivative(ip, "out", case.source, 1)
    assert d.summed is False and d.status == VALUE
    close(d.value, grad, case.tol)
    d2 = derivative(ip, "out", case.source, 2)
    close(d2.value, second, case.tol)
    if not np.any(second):  # trace: TF's None at order 2, shown as zeros
        assert d2.status in {ZERO, STRUCTURAL}


@pytest.mark.parametrize(("case", "i"), SCALAR_POINTS)
def test_scalar_target_hessian(ip, case: Scalar, i: int):
    bind_constants(ip, case.constants)
    bind(ip, **{case.source: case.points[i]})
    run(ip, f"%%tape --hessian -q\nout = {case.expr}")
    _, grad, hessian, _ = scalar_expected(case, i)
    close(ip.user_ns["_tape"].gradient("out", case.source), grad, case.tol)
    d = derivative(ip, "out", case.source, 1, "hessian")
    close(d.value, hessian, case.tol)
    assert d.status in expected_status(hessian)


@pytest.mark.parametrize(("case", "i"), SCALAR_POINTS)
def test_scalar_target_grad(ip, case: Scalar, i: int):
    bind_constants(ip, case.constants)
    at = f"--wrt {case.source} --at {case.source}={literal(case.points[i])}"
    _, grad, _, second = scalar_expected(case, i)
    close(ip.run_line_magic("grad", f"{case.expr} {at} -q"), grad, case.tol)
    close(ip.run_line_magic("grad", f"{case.expr} {at} -o 2 -q"), second, case.tol)


# -- non-scalar targets: full Jacobian --------------------------------------------------
@dataclass(frozen=True)
class Jacobian:
    name: str
    expr: str
    source: str
    jacobian: Callable[..., np.ndarray]  # (size of target, size of source)
    points: tuple[Any, ...]
    constants: dict[str, Any] = field(default_factory=dict)
    tol: dict[str, float] = field(default_factory=lambda: TOL)


A23 = [[1.0, -2.0, 0.5], [0.0, 3.0, 1.0]]

JACOBIANS = [
    Jacobian("softmax", "tf.nn.softmax(x)", "x", softmax_hessian, VECTORS),
    Jacobian("tanh_vector", "tf.tanh(x)", "x", lambda x: np.diag(1 - np.tanh(x) ** 2), VECTORS),
    Jacobian(
        "matmul_wrt_matrix",
        "tf.matmul(A, W)",
        "W",
        lambda w, A: np.kron(A, np.eye(w.shape[1])),  # d(AW)_ij / dW_kl = A_ik [j == l]
        ([[1.0, 2.0], [0.5, -1.0], [3.0, 0.0]], [[0.0, 1.0], [-2.0, 0.5], [1.0, 1.0]]),
        {"A": A23},
    ),
]

JACOBIAN_POINTS = [
    pytest.param(case, i, id=f"{case.name}@{i}")
    for case in JACOBIANS
    for i in range(len(case.points))
]


def jacobian_expected(case: Jacobian, i: int):
    x = as64(case.points[i])
    constants = {k: as64(v) for k, v in case.constants.items()}
    jac = case.jacobian(x, **constants)
    return x, jac, jac.sum(axis=0).reshape(x.shape)  # Jacobian, gradient of the sum


@pytest.mark.parametrize(("case", "i"), JACOBIAN_POINTS)
def test_jacobian_tape(ip, case: Jacobian, i: int):
    bind_constants(ip, case.constants)
    bind(ip, **{case.source: case.points[i]})
    run(ip, f"%%tape --jacobian -q\nout = {case.expr}")
    _, jac, summed = jacobian_expected(case, i)
    d = derivative(ip, "out", case.source, 1, "jacobian")
    assert d.summed is False
    close(d.value, jac, case.tol)
    g = derivative(ip, "out", case.source, 1)
    assert g.summed is True  # a non-scalar target: the gradient is that of its sum
    close(g.value, summed, case.tol)


@pytest.mark.parametrize(("case", "i"), JACOBIAN_POINTS)
def test_jacobian_grad(ip, case: Jacobian, i: int):
    bind_constants(ip, case.constants)
    at = f"--wrt {case.source} --at {case.source}={literal(case.points[i])}"
    _, jac, summed = jacobian_expected(case, i)
    close(ip.run_line_magic("grad", f"{case.expr} {at} --jacobian -q"), jac, case.tol)
    close(ip.run_line_magic("grad", f"{case.expr} {at} -q"), summed, case.tol)


# -- two sources: both partials ----------------------------------------------------------
@dataclass(frozen=True)
class TwoSources:
    name: str
    expr: str  # of x and y
    dx: Callable[[Any, Any], Any]
    dy: Callable[[Any, Any], Any]
    dxx: Callable[[Any, Any], Any]
    dyy: Callable[[Any, Any], Any]
    points: tuple[tuple[float, float], ...]
    tol: dict[str, float] = field(default_factory=lambda: TOL)


TWO_SOURCES = [
    TwoSources(
        "product",
        "x * y",
        lambda x, y: y,
        lambda x, y: x,
        lambda x, y: 0 * x,
        lambda x, y: 0 * y,
        ((2.0, 3.0), (-1.5, 0.5)),
    ),
    TwoSources(
        "square_times",
        "x**2 * y",
        lambda x, y: 2 * x * y,
        lambda x, y: x**2,
        lambda x, y: 2 * y,
        lambda x, y: 0 * y,
        ((2.0, 3.0), (-1.5, 0.5)),
    ),
    TwoSources(
        "quotient",
        "x / y",
        lambda x, y: 1 / y,
        lambda x, y: -x / y**2,
        lambda x, y: 0 * x,
        lambda x, y: 2 * x / y**3,
        ((2.0, 3.0), (-1.5, 0.5)),
    ),
]

TWO_SOURCE_POINTS = [
    pytest.param(case, p, id=f"{case.name}@{p[0]},{p[1]}")
    for case in TWO_SOURCES
    for p in case.points
]


@pytest.mark.parametrize(("case", "point"), TWO_SOURCE_POINTS)
def test_two_sources_tape(ip, case: TwoSources, point):
    bind(ip, x=point[0], y=point[1])
    run(ip, f"%%tape -o 2 -q\nout = {case.expr}")
    tape = ip.user_ns["_tape"]
    assert tape.targets == ["out"] and sorted(tape.sources) == ["x", "y"]
    x, y = as64(point[0]), as64(point[1])
    expected = {
        ("x", 1): case.dx(x, y),
        ("y", 1): case.dy(x, y),
        ("x", 2): case.dxx(x, y),
        ("y", 2): case.dyy(x, y),
    }
    for (source, order), value in expected.items():
        d = derivative(ip, "out", source, order)
        close(d.value, value, case.tol)
        assert d.status in expected_status(value), (source, order, d.status)


@pytest.mark.parametrize(("case", "point"), TWO_SOURCE_POINTS)
def test_two_sources_grad(ip, case: TwoSources, point):
    x, y = as64(point[0]), as64(point[1])
    at = f"--wrt x,y --at x={literal(point[0])},y={literal(point[1])}"
    gx, gy = ip.run_line_magic("grad", f"{case.expr} {at} -q")
    close(gx, case.dx(x, y), case.tol)
    close(gy, case.dy(x, y), case.tol)
    hx, hy = ip.run_line_magic("grad", f"{case.expr} {at} -o 2 -q")
    close(hx, case.dxx(x, y), case.tol)
    close(hy, case.dyy(x, y), case.tol)


# -- the `summed` flag: set exactly when the target has more than one element ----------
def summed_param(name, cell, order, expected):
    return pytest.param(cell, order, expected, id=f"{name}-order{order}")


SUMMED = [
    summed_param("scalar_of_scalar", "x = tf.constant(0.5)\nout = tf.sin(x)", 1, False),
    summed_param("scalar_of_scalar", "x = tf.constant(0.5)\nout = tf.sin(x)", 2, False),
    summed_param("vector_of_vector", "x = tf.constant([0.5, 2.0])\nout = tf.sin(x)", 1, True),
    summed_param("vector_of_vector", "x = tf.constant([0.5, 2.0])\nout = tf.sin(x)", 2, True),
    summed_param(
        "scalar_of_vector", "x = tf.constant([0.5, 2.0])\nout = tf.reduce_sum(x**3)", 1, False
    ),
    summed_param(
        "scalar_of_vector",
        "x = tf.constant([0.5, 2.0])\nout = tf.reduce_sum(x**3)",
        2,
        False,
    ),
    summed_param("vector_of_scalar", "x = tf.constant(2.0)\nout = c * x**2", 1, True),
    summed_param("vector_of_scalar", "x = tf.constant(2.0)\nout = c * x**2", 2, True),
]


@pytest.mark.parametrize(("cell", "order", "summed"), SUMMED)
def test_summed_flag(ip, cell: str, order: int, summed: bool):
    ip.user_ns["c"] = np.array([1.0, 2.0, 3.0], dtype=F32)
    setup, body = cell.split("\n")
    run(ip, setup)
    run(ip, f"%%tape -o 2 -q\n{body}")
    d = derivative(ip, "out", "x", order)
    assert d.summed is summed
    assert ("Σout" in d.notation) is summed


def test_vector_target_of_scalar_source(ip):
    """out = c * x**2: d(sum out)/dx = 2 x sum(c), d2(sum out)/dx2 = 2 sum(c)."""
    c = np.array([1.0, 2.0, 3.0])
    ip.user_ns["c"] = c.astype(F32)
    bind(ip, x=2.0)
    run(ip, "%%tape -o 2 -q\nout = c * x**2")
    close(derivative(ip, "out", "x", 1).value, 2 * 2.0 * c.sum(), TOL)
    close(derivative(ip, "out", "x", 2).value, 2 * c.sum(), TOL)
    close(ip.run_line_magic("grad", "c * x**2 --wrt x --at x=2.0 -o 2 -q"), 2 * c.sum(), TOL)


def test_at_least_25_functions_of_every_shape():
    """Enough functions that a wrong rule in one op or one shape of derivative shows."""
    groups = (ELEMENTWISE, SCALARS, JACOBIANS, TWO_SOURCES)
    assert all(groups) and sum(map(len, groups)) >= 25
