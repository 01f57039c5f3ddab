"""Benchmark of the loss landscape, the landscape view and `compare` (issue targets).

Run it as a script (pytest does not collect it):

    .venv/bin/python tests/bench_landscape.py [--quick]

1. the seed's 61 x 61 grid, warm, through `panel.landscape()`: under 50 ms;
2. the seed trained by a panel with the landscape view open and drawing: at least 0.9x
   the headless trainer's epochs/s;
3. MLP 64-256-256-1, a 41 x 41 slice on 512 samples (about 7e10 multiply-adds): within
   2x of the same forward passes as one compiled chain of batched matmuls, the machine's
   limit; and the MLP's training slowed by at most 10% while the view computes slices;
4. `compare` with sgd, momentum and adam on the seed: each copy at least 0.8x a single
   trainer's epochs/s, the single trainer being Adam's, the slowest of the three (each
   copy's ratio to its own optimizer's single trainer is printed too; two copies, and the
   three as Keras-optimizer steps written one after another in one call, for reference).

Contenders run interleaved, round after round, so a shared machine's noise falls on all
of them; each figure is a median. It prints a table and PASS/FAIL lines and exits 0.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tapemagic.jupyter.panel import TrainingPanel  # noqa: E402
from tapemagic.training.compare import Comparison  # noqa: E402
from tapemagic.training.landscape import LandscapeMaker  # noqa: E402
from tapemagic.training.trainer import Trainer  # noqa: E402

X_SEED = [1.0, 4.0, 6, 3, 3, 4, 5, 6, 7]
Y_SEED = [0.25, 1.2, 0.79, 0.52, 1.6, 1.7, 1.9, 2, 2]
ROWS: list[tuple[str, str, str, str]] = []


def seed_loss(y_true, y_pred):
    return tf.reduce_sum(tf.square(y_true - y_pred))


def seed_kwargs() -> dict:
    a, b = tf.Variable(0.0), tf.Variable(0.0)
    return dict(params={"a": a, "b": b}, predict=lambda x: a * x + b, loss=seed_loss,
                data=(tf.constant(X_SEED), tf.constant(Y_SEED)))  # fmt: skip


def row(what: str, value: str, target: str, ok: bool) -> None:
    ROWS.append((what, value, target, "PASS" if ok else "FAIL"))
    print(f"  {what}: {value} (target {target}) {'PASS' if ok else 'FAIL'}", flush=True)


def seed_grid(rounds: int) -> None:
    from tapemagic.jupyter.landscape_view import _makers

    panel = TrainingPanel(**seed_kwargs(), optimizer="sgd", learning_rate=0.001, view="widget")
    panel.run(200)
    panel.landscape()  # compiles
    maker = _makers[panel]
    fresh, kept = [], []
    for _ in range(rounds):
        maker._grid = maker._minimum = None  # all of it computed again: grid, Newton, path
        start = time.perf_counter()
        panel.landscape()
        fresh.append(time.perf_counter() - start)
        start = time.perf_counter()
        panel.landscape()  # the same frame: the grid over (a, b) is kept
        kept.append(time.perf_counter() - start)
    ms, kept_ms = 1000 * statistics.median(fresh), 1000 * statistics.median(kept)
    print(f"  (again in the same frame, the grid kept: {kept_ms:.1f} ms)")
    row("seed 61x61 grid, panel.landscape(), warm", f"{ms:.1f} ms", "< 50 ms", ms < 50)
    panel.close()


def idle(view) -> None:
    """Wait until the view computes nothing (so that it slows no other contender)."""
    while view._busy:
        time.sleep(0.02)


def seed_panel_speed(rounds: int, epochs: int) -> None:
    headless = Trainer(**seed_kwargs(), optimizer="sgd", learning_rate=1e-4)
    plain = TrainingPanel(**seed_kwargs(), optimizer="sgd", learning_rate=1e-4, view="widget")
    panel = TrainingPanel(**seed_kwargs(), optimizer="sgd", learning_rate=1e-4, view="widget")
    panel.views.show("landscape")
    view = panel.views.view("landscape")
    contenders = {"headless": headless.run, "loss view": plain.run, "landscape view": panel.run}
    for run in contenders.values():  # warm-up: compile
        run(epochs)
    rates: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(rounds):
        for name, run in contenders.items():
            idle(view)
            start = time.perf_counter()
            run(epochs)
            rates[name].append(epochs / (time.perf_counter() - start))
    h, lv, p = (statistics.median(rates[k]) for k in contenders)
    print(f"  (panel with the loss view: {lv:,.0f} epochs/s = {lv / h:.2f}x headless; "
          f"landscapes computed while training: {view._serial})")  # fmt: skip
    row("seed: panel with landscape view / headless epochs/s", f"{p:,.0f} / {h:,.0f} = "
        f"{p / h:.2f}x", ">= 0.9x", p / h >= 0.9)  # fmt: skip
    panel.close()
    plain.close()


def mlp(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((64,)), keras.layers.Dense(256, activation="relu"),
        keras.layers.Dense(256, activation="relu"), keras.layers.Dense(1),
    ])  # fmt: skip


def matmul_chain(model: keras.Model, x: tf.Tensor, y: tf.Tensor, chunk: int):
    """The same forward passes written by hand: each chunk of weight sets as batched
    matmuls, in one compiled call (the reference for what the machine can do)."""
    shapes = [tuple(v.shape) for v in model.trainable_variables]
    sizes = [int(np.prod(s)) for s in shapes]

    @tf.function
    def run(center, dirs, coords):
        def one_chunk(c):
            w = center[None] + c[:, :1] * dirs[0][None] + c[:, 1:] * dirs[1][None]
            k1, b1, k2, b2, k3, b3 = (
                tf.reshape(p, (-1, *s))
                for p, s in zip(tf.split(w, sizes, axis=1), shapes, strict=True)
            )
            h = tf.nn.relu(tf.einsum("si,pio->pso", x, k1) + b1[:, None])
            h = tf.nn.relu(tf.matmul(h, k2) + b2[:, None])
            out = tf.matmul(h, k3) + b3[:, None]
            return tf.reduce_mean(tf.square(y[None] - out), axis=[1, 2])

        return tf.map_fn(one_chunk, coords)

    return run


LONG_RUN_S = 40.0  # each timed training run: long enough for the view to finish slices


def mlp_slice(rounds: int, samples: int, epochs: int) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(samples, 64)).astype("float32")
    y = (np.sin(x[:, :1]) + 0.5 * x[:, 1:2] ** 2).astype("float32")
    model = mlp()
    trainer = Trainer(model=model, loss="mse", data=(x, y), optimizer="adam",
                      learning_rate=0.001, batch_size=256, seed=0)  # fmt: skip
    trainer.run(1)
    maker = LandscapeMaker(trainer, resolution=41)
    loss = maker.loss()
    land = maker.compute(find_minimum=False)  # compiles
    coords = np.stack(np.meshgrid(land.x, land.y), -1).reshape(-1, 2)
    chunk = loss.chunk
    pad = -len(coords) % chunk
    blocks = np.concatenate([coords, np.repeat(coords[-1:], pad, 0)]).reshape(-1, chunk, 2)
    ref = matmul_chain(model, loss.x, loss.y, chunk)
    args = (tf.constant(land.center, tf.float32), tf.constant(land.directions, tf.float32),
            tf.constant(blocks, tf.float32))  # fmt: skip
    ref_values = ref(*args).numpy().reshape(-1)[: len(coords)]
    np.testing.assert_allclose(ref_values, land.values.reshape(-1), rtol=2e-3)
    ours, theirs = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        loss.grid(land.center, land.directions, coords)
        ours.append(time.perf_counter() - start)
        start = time.perf_counter()
        ref(*args).numpy()
        theirs.append(time.perf_counter() - start)
    o, t = statistics.median(ours), statistics.median(theirs)
    macs = (
        len(coords) * loss.samples * sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    )
    print(f"  ({macs:.2g} multiply-adds; {loss.chunk} grid points per chunk)")
    row("MLP 41x41 slice on 512 samples / batched matmul chain", f"{o:.2f} s / {t:.2f} s = "
        f"{o / t:.2f}x", "<= 2x", o / t <= 2.0)  # fmt: skip

    # training with and without the landscape view computing slices meanwhile
    headless = Trainer(model=mlp(), loss="mse", data=(x, y), optimizer="adam",
                       learning_rate=0.001, batch_size=256, seed=0)  # fmt: skip
    panel = TrainingPanel(model=mlp(), loss="mse", data=(x, y), optimizer="adam",
                          learning_rate=0.001, batch_size=256, seed=0, view="widget")  # fmt: skip
    headless.run(1)
    panel.run(1)
    panel.views.show("landscape")
    view = panel.views.view("landscape")
    while view.landscape is None:  # compiled before timing
        time.sleep(0.1)
    # While training runs the view rations its grids (SHARE of the wall time), so a slice
    # takes ~1/SHARE of its own time to finish: the runs must be long enough to hold several,
    # or the ratio would measure nothing.
    start = time.perf_counter()
    headless.run(epochs)
    long = max(epochs, int(LONG_RUN_S * epochs / (time.perf_counter() - start)))
    plain, busy, slices = [], [], 0
    for _ in range(rounds):
        idle(view)
        start = time.perf_counter()
        headless.run(long)
        plain.append(long / (time.perf_counter() - start))
        before = view._serial
        start = time.perf_counter()
        panel.run(long)
        busy.append(long / (time.perf_counter() - start))
        slices += view._serial - before
        print(f"  ({long} epochs; slices computed during that run: {view._serial - before})")
    p, b = statistics.median(plain), statistics.median(busy)
    value = f"{b:.2f} / {p:.2f} epochs/s = {b / p:.2f}x, {slices} slices"
    row("MLP training with the landscape view computing / without", value, ">= 0.9x",
        b / p >= 0.9 and slices > 0)  # fmt: skip
    panel.close()


def compare_speed(rounds: int, epochs: int, optimizers: str, target: float | None) -> None:
    """Each copy's epochs/s in the comparison against single trainers: Adam's (the
    slowest of the three optimizers, the target's reference) and each copy's own."""
    race = Comparison(optimizers, **seed_kwargs())
    singles = {
        c.label: Trainer(**seed_kwargs(), optimizer=c.optimizer, learning_rate=c.learning_rate)
        for c in race.contenders
    }
    adam = next(label for label in singles if label.startswith("adam"))
    race.run(epochs)
    for t in singles.values():
        t.run(epochs)
    alone: dict[str, list[float]] = {label: [] for label in singles}
    copies = []
    for _ in range(rounds):
        for label, t in singles.items():
            start = time.perf_counter()
            t.run(epochs)
            alone[label].append(epochs / (time.perf_counter() - start))
        start = time.perf_counter()
        race.run(epochs)
        copies.append(epochs / (time.perf_counter() - start))  # each copy did `epochs`
    c = statistics.median(copies)
    how = race.threads_because or "none: one compiled call"
    print(f"  ({len(race.trainers)} copies on {os.cpu_count()} CPU cores; why threads: {how})")
    for label, rates in alone.items():
        a = statistics.median(rates)
        print(f"  each copy {c:,.0f} / single {label} {a:,.0f} epochs/s = {c / a:.2f}x")
    a = statistics.median(alone[adam])
    what = f"compare x{len(race.trainers)} on the seed: each copy / single {adam} trainer epochs/s"
    if target is None:
        print(f"  {what}: {c:,.0f} / {a:,.0f} = {c / a:.2f}x (for reference)")
        return
    row(what, f"{c:,.0f} / {a:,.0f} = {c / a:.2f}x", f">= {target}x", c / a >= target)


def fused_reference(rounds: int, epochs: int) -> None:
    """The three copies' steps as Keras optimizer steps, one after another in one while
    loop, against Adam's alone (no history, no fault checks): why race.py stacks the
    copies and writes the updates out instead."""
    x, y = tf.constant(X_SEED), tf.constant(Y_SEED)

    def make(opt):
        a, b = tf.Variable(0.0), tf.Variable(0.0)
        opt.build([a, b])

        def step():
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.square(y - (a * x + b)))
            grads = tape.gradient(loss, [a, b])
            opt.apply_gradients(zip(grads, [a, b], strict=True))
            return tf.stack([loss, grads[0], grads[1], a, b])

        return step

    def loop(steps):
        @tf.function(autograph=False)
        def run(n):
            rows = tf.TensorArray(tf.float32, size=n)

            def body(e, rows):
                return e + 1, rows.write(e, tf.concat([s() for s in steps], 0))

            return tf.while_loop(lambda e, _: e < n, body, (tf.constant(0), rows))[1].stack()

        return run

    alone = loop([make(keras.optimizers.Adam(1e-4))])
    fused = loop([make(keras.optimizers.SGD(1e-4)), make(keras.optimizers.SGD(1e-4, momentum=0.9)),
                  make(keras.optimizers.Adam(1e-4))])  # fmt: skip
    n = tf.constant(epochs)
    rates: dict[str, list[float]] = {"alone": [], "fused": []}
    for fn in (alone, fused):
        fn(n).numpy()
    for _ in range(rounds):
        for name, fn in (("alone", alone), ("fused", fused)):
            start = time.perf_counter()
            fn(n).numpy()
            rates[name].append(epochs / (time.perf_counter() - start))
    a, f = statistics.median(rates["alone"]), statistics.median(rates["fused"])
    print(
        f"  one hand-written compiled call for the three copies: each copy {f:,.0f} / one "
        f"alone {a:,.0f} epochs/s = {f / a:.2f}x (for reference: unstacked, the ops add up)"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer rounds, smaller runs")
    args = parser.parse_args()
    rounds = 3 if args.quick else 7
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPU cores", flush=True)
    print("1. seed grid", flush=True)
    seed_grid(rounds * 3)
    print("2. seed panel with the landscape view", flush=True)
    seed_panel_speed(rounds, 20_000 if args.quick else 50_000)
    print("3. MLP slice", flush=True)
    mlp_slice(rounds, 4096 if args.quick else 8192, 80 if args.quick else 150)
    print("4. compare", flush=True)
    epochs = 20_000 if args.quick else 50_000
    compare_speed(rounds, epochs, "sgd:1e-4,adam:1e-4", None)
    compare_speed(rounds, epochs, "sgd:1e-4,momentum:1e-4,adam:1e-4", 0.8)
    fused_reference(rounds, epochs)
    width = max(len(r[0]) for r in ROWS)
    print()
    print(f"{'measure':<{width}}  {'value':<34}  {'target':<9}  verdict")
    for what, value, target, verdict in ROWS:
        print(f"{what:<{width}}  {value:<34}  {target:<9}  {verdict}")


if __name__ == "__main__":
    main()
