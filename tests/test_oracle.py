"""Differential test: %%tape and %grad against an independent oracle.

The oracle is forward-mode Taylor arithmetic written in NumPy: every expression is a seeded,
generated composition of smooth primitives, evaluated as a jet (value and its first three
derivatives, propagated by the chain rule of Faà di Bruno), so no TensorFlow gradient code is
involved on its side. Compared: orders 1 to 3, Jacobians and Hessians, in float32 and float64
(float16 and bfloat16 at their own precision), and --check's verdict on the same functions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from conftest import run

# -- the oracle: jets (f, f', f'', f''') -------------------------------------------------


@dataclass
class Jet:
    v: np.ndarray
    d1: np.ndarray
    d2: np.ndarray
    d3: np.ndarray

    def __add__(self, o: Jet) -> Jet:
        return Jet(self.v + o.v, self.d1 + o.d1, self.d2 + o.d2, self.d3 + o.d3)

    def __mul__(self, o: Jet) -> Jet:  # Leibniz
        return Jet(
            self.v * o.v,
            self.d1 * o.v + self.v * o.d1,
            self.d2 * o.v + 2 * self.d1 * o.d1 + self.v * o.d2,
            self.d3 * o.v + 3 * self.d2 * o.d1 + 3 * self.d1 * o.d2 + self.v * o.d3,
        )


def compose(f: tuple, g: Jet) -> Jet:
    """f(g(x)) from f's value and three derivatives at g (Faà di Bruno)."""
    f0, f1, f2, f3 = f
    return Jet(
        f0,
        f1 * g.d1,
        f2 * g.d1**2 + f1 * g.d2,
        f3 * g.d1**3 + 3 * f2 * g.d1 * g.d2 + f1 * g.d3,
    )


def _tanh(u):
    t = np.tanh(u)
    return t, 1 - t**2, -2 * t * (1 - t**2), -2 * (1 - t**2) * (1 - 3 * t**2)


def _sigmoid(u):
    s = 1 / (1 + np.exp(-u))
    return s, s * (1 - s), s * (1 - s) * (1 - 2 * s), s * (1 - s) * (1 - 6 * s + 6 * s**2)


# name -> (TensorFlow code with {} for the argument, (f, f', f'', f''') at u)
PRIMITIVES = {
    "sin": ("tf.sin({})", lambda u: (np.sin(u), np.cos(u), -np.sin(u), -np.cos(u))),
    "cos": ("tf.cos({})", lambda u: (np.cos(u), -np.sin(u), -np.cos(u), np.sin(u))),
    "exp": ("tf.exp({})", lambda u: (np.exp(u),) * 4),
    "tanh": ("tf.tanh({})", _tanh),
    "sigmoid": ("tf.sigmoid({})", _sigmoid),
    "square": ("tf.square({})", lambda u: (u**2, 2 * u, 2 + 0 * u, 0 * u)),
    "cube": ("({}) ** 3", lambda u: (u**3, 3 * u**2, 6 * u, 6 + 0 * u)),
}


@dataclass
class Expr:
    template: str  # TensorFlow code with @ for the variable

    def code(self, name: str = "x") -> str:
        return self.template.replace("@", name)

    jet: object  # x (a Jet of the identity) -> Jet of the expression


def generate(rng: np.random.Generator, depth: int) -> Expr:
    """A random composition: primitives of affine maps, sums and products, down to x."""
    if depth == 0:
        return Expr("@", lambda x: x)
    kind = rng.choice(["unary", "unary", "affine", "add", "mul"])
    if kind in ("add", "mul"):
        a, b = generate(rng, depth - 1), generate(rng, depth - 1)
        op = " + " if kind == "add" else " * "
        if kind == "add":
            return Expr(f"({a.template}{op}{b.template})", lambda x, a=a, b=b: a.jet(x) + b.jet(x))
        return Expr(f"({a.template}{op}{b.template})", lambda x, a=a, b=b: a.jet(x) * b.jet(x))
    inner = generate(rng, depth - 1)
    if kind == "affine":
        k, c = float(np.round(rng.uniform(0.5, 1.5), 2)), float(np.round(rng.uniform(-1, 1), 2))

        def affine(x, inner=inner, k=k, c=c):
            j = inner.jet(x)
            return Jet(k * j.v + c, k * j.d1, k * j.d2, k * j.d3)

        return Expr(f"({k!r} * {inner.template} + {c!r})", affine)
    name = str(rng.choice(sorted(PRIMITIVES)))
    code, f = PRIMITIVES[name]

    def unary(x, inner=inner, f=f):
        j = inner.jet(x)
        return compose(f(j.v), j)

    return Expr(code.format(inner.template), unary)


def identity(x: np.ndarray) -> Jet:
    return Jet(x, np.ones_like(x), np.zeros_like(x), np.zeros_like(x))


def sample(seed: int, n: int, depth: int) -> list[Expr]:
    rng = np.random.default_rng(seed)
    return [generate(rng, int(rng.integers(1, depth + 1))) for _ in range(n)]


def close(got, want, rtol: float) -> bool:
    """Equal up to `rtol` of the larger of the value and 1 (cancellation-safe for orders 3)."""
    got = np.asarray(got, dtype=np.float64)
    return bool(np.all(np.abs(got - want) <= rtol * np.maximum(np.abs(want), 1.0)))


# -- the comparisons ---------------------------------------------------------------------

RTOL = {"float64": 1e-9, "float32": 2e-4, "float16": 3e-2, "bfloat16": 1e-1}


def as_float64(ip, name: str) -> np.ndarray:
    return np.asarray(ip.user_ns["tf"].cast(ip.user_ns[name], "float64").numpy())


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_orders_one_to_three_of_scalar_compositions(ip, dtype):
    for i, e in enumerate(sample(seed=1 if dtype == "float32" else 2, n=12, depth=3)):
        x0 = np.round(np.random.default_rng(100 + i).uniform(-1, 1), 3)
        run(ip, f"x = tf.constant({x0!r}, tf.{dtype})")
        run(ip, f"%%tape -q -o 3\ny = {e.code()}")
        r, want = ip.user_ns["_tape"], e.jet(identity(np.float64(x0)))
        got = [r.gradient("y", "x", order=k) for k in (1, 2, 3)]
        for k, (g, w) in enumerate(zip(got, (want.d1, want.d2, want.d3), strict=True), 1):
            g = np.asarray(g.numpy(), np.float64)
            assert close(g, w, RTOL[dtype]), f"order {k} of {e.code()} at {x0}: {g} != {w}"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_jacobians_and_hessians_of_vector_compositions(ip, dtype):
    weights = np.array([0.5, -1.0, 2.0])
    for i, e in enumerate(sample(seed=3 if dtype == "float32" else 4, n=6, depth=2)):
        x0 = np.round(np.random.default_rng(200 + i).uniform(-1, 1, 3), 3)
        run(ip, f"xv = tf.constant({x0.tolist()!r}, tf.{dtype})")
        run(ip, f"wv = tf.constant({weights.tolist()!r}, tf.{dtype})")
        cell = f"%%tape -q -w xv --jacobian --hessian\nz = {e.code('xv')}\n"
        cell += f"s = tf.reduce_sum(wv * xv)\ny = {e.code('s')}"  # a scalar function of w . x
        run(ip, cell)
        r = ip.user_ns["_tape"]
        elementwise = e.jet(identity(x0))  # z = e(x) elementwise: J = diag(e'(x))
        jac = r.find("z", "xv", kind="jacobian").value.numpy()
        assert close(jac, np.diag(elementwise.d1), RTOL[dtype]), (e.code(), jac)
        scalar = e.jet(identity(np.float64(weights @ x0)))  # y = e(w . x)
        grad = r.gradient("y", "xv").numpy()
        assert close(grad, scalar.d1 * weights, RTOL[dtype]), (e.code(), grad)
        hess = r.find("y", "xv", kind="hessian").value.numpy()
        assert close(hess, scalar.d2 * np.outer(weights, weights), RTOL[dtype]), (e.code(), hess)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_sources_at_their_precision(ip, dtype):
    for i, e in enumerate(sample(seed=5, n=8, depth=2)):
        x0 = np.round(np.random.default_rng(300 + i).uniform(-1, 1), 2)
        run(ip, f"x = tf.constant({x0!r}, tf.{dtype})")
        run(ip, f"%%tape -q -o 2\ny = {e.code()}")
        r = ip.user_ns["_tape"]
        at = float(as_float64(ip, "x"))  # the point as the dtype holds it
        want = e.jet(identity(np.float64(at)))
        for k, w in ((1, want.d1), (2, want.d2)):
            g = r.gradient("y", "x", order=k)
            assert g.dtype.name == dtype
            got = np.asarray(ip.user_ns["tf"].cast(g, "float64").numpy())
            assert close(got, w, RTOL[dtype]), f"order {k} of {e.code()} at {at}: {got} != {w}"


def test_grad_magic_agrees_with_the_oracle(ip):
    for i, e in enumerate(sample(seed=6, n=6, depth=3)):
        x0 = float(np.round(np.random.default_rng(400 + i).uniform(-1, 1), 3))
        ip.user_ns["x"] = ip.user_ns["tf"].constant(x0, "float64")
        got = ip.run_line_magic("grad", f"{e.code()} -o 2")
        want = e.jet(identity(np.float64(x0)))
        assert close(got.numpy(), want.d2, RTOL["float64"]), (e.code(), got, want.d2)


@pytest.mark.parametrize("kind", ["constant", "Variable"])
def test_check_says_ok_on_every_smooth_composition(ip, kind):
    """--check never cries wolf: each sampled function is smooth, its derivative right."""
    for i, e in enumerate(sample(seed=7, n=6, depth=3)):
        x0 = np.round(np.random.default_rng(500 + i).uniform(-1, 1), 3)
        run(ip, f"x = tf.{kind}({x0!r})")
        run(ip, f"%%tape -q --check -w x\ny = {e.code()}")
        check = ip.user_ns["_tape"].find("y", "x").check
        assert check.verdict == "ok", (e.code(), x0, check)
