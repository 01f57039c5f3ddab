"""Benchmark of the headless `Trainer` against the seed's loop and Keras `fit`.

Run it as a script (pytest does not collect it: its name does not start with test_):

    .venv/bin/python tests/bench_trainer.py [--quick]

Targets, measured side by side in one process:

1. the seed's linear regression (9 points, full batch, SGD): epochs/s of the Trainer at
   least 60x the seed's eager GradientTape loop (which prints, so reads, each loss);
2. MLP 64-256-256-1 on 60,000 synthetic samples, batch 256, Adam, MSE: samples/s at least
   1.5x Keras `model.fit` with its defaults and 1.1x `fit` after
   `compile(steps_per_execution=32)`.

The contenders run interleaved, round after round, so the noise of a shared machine falls
on all of them; each figure is the median of the rounds, after a warm-up. It prints a
table and PASS/FAIL lines and always exits 0: a report, not a gate.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tapemagic.training.trainer import Trainer  # noqa: E402

SEED_RATIO = 60.0
FIT_RATIO = 1.5
FIT32_RATIO = 1.1

X_SEED = [1.0, 4.0, 6, 3, 3, 4, 5, 6, 7]
Y_SEED = [0.25, 1.2, 0.79, 0.52, 1.6, 1.7, 1.9, 2, 2]


def seed_loss(y_true, y_pred):
    return tf.reduce_sum(tf.square(y_true - y_pred))


def timed(fn: Callable[[], int]) -> float:
    """Units per second of one call of fn (which returns how many units it did)."""
    start = time.perf_counter()
    units = fn()
    return units / (time.perf_counter() - start)


# -- 1. the seed's regression ---------------------------------------------------------


def seed_eager(seconds: float) -> Callable[[], int]:
    """The tutorial's loop: persistent tape, one gradient per variable, assign_sub."""
    X, Y = tf.constant(X_SEED), tf.constant(Y_SEED)
    a, b = tf.Variable(0.0), tf.Variable(0.0)
    lr = 0.001

    def train_step():
        with tf.GradientTape(persistent=True) as tape:
            loss = seed_loss(Y, a * X + b)
        loss.numpy()  # the tutorial prints the loss of every epoch
        a.assign_sub(tape.gradient(loss, a) * lr)
        b.assign_sub(tape.gradient(loss, b) * lr)
        del tape

    def go() -> int:
        n, end = 0, time.perf_counter() + seconds
        while time.perf_counter() < end:
            train_step()
            n += 1
        return n

    return go


def seed_trainer(seconds: float) -> Callable[[], int]:
    X, Y = tf.constant(X_SEED), tf.constant(Y_SEED)
    a, b = tf.Variable(0.0), tf.Variable(0.0)
    trainer = Trainer(
        params={"a": a, "b": b},
        predict=lambda x: a * x + b,
        loss=seed_loss,
        data=(X, Y),
        optimizer="sgd",
        learning_rate=0.001,
    )
    trainer.run(2000)  # trace, and let the call size adapt
    state = {"epochs": 2000}

    def go() -> int:
        epochs = state["epochs"]
        start = time.perf_counter()
        trainer.run(epochs)
        took = time.perf_counter() - start
        state["epochs"] = max(1000, int(epochs * seconds / took))
        return epochs

    go()  # calibrate to about `seconds` per round
    return go


# -- 2. the MLP -----------------------------------------------------------------------


def mlp_data(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 64)).astype("float32")
    y = (x[:, :1] * 2.0 + np.sin(x[:, 1:2]) - 0.5 * x[:, 2:3] ** 2).astype("float32")
    return x, y


def mlp() -> keras.Model:
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(1),
        ]
    )


def mlp_fit(x, y, epochs: int, steps_per_execution: int = 1) -> Callable[[], int]:
    model = mlp()
    model.compile(optimizer="adam", loss="mse", steps_per_execution=steps_per_execution)
    model.fit(x, y, batch_size=256, epochs=1, verbose=0)  # warm-up: trace and build

    def go() -> int:
        model.fit(x, y, batch_size=256, epochs=epochs, verbose=0)
        return epochs * len(x)

    return go


def mlp_trainer(x, y, epochs: int) -> Callable[[], int]:
    trainer = Trainer(model=mlp(), loss="mse", data=(x, y), optimizer="adam", batch_size=256)
    trainer.run(1)  # warm-up: trace, and let the call size adapt

    def go() -> int:
        trainer.run(epochs)
        return epochs * len(x)

    return go


# -- report ---------------------------------------------------------------------------


def rounds(contenders: dict[str, Callable[[], int]], n: int) -> dict[str, float]:
    """Median rate of each contender over n interleaved rounds."""
    rates: dict[str, list[float]] = {k: [] for k in contenders}
    for i in range(n):
        order = list(contenders) if i % 2 == 0 else list(reversed(contenders))
        for name in order:
            rates[name].append(timed(contenders[name]))
    return {k: statistics.median(v) for k, v in rates.items()}


def verdict(ratio: float, target: float) -> str:
    return f"{ratio:6.1f}x  (target >= {target}x: {'PASS' if ratio >= target else 'FAIL'})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds")
    args = parser.parse_args()
    n_rounds = 3 if args.quick else 5
    seconds = 0.5 if args.quick else 1.5
    print(
        f"TensorFlow {tf.__version__}, Keras {keras.__version__}, Python "
        f"{platform.python_version()}, {os.cpu_count()} CPUs, "
        f"GPUs: {len(tf.config.list_physical_devices('GPU'))}"
    )

    seed = rounds({"eager": seed_eager(seconds), "trainer": seed_trainer(seconds)}, n_rounds)
    print("\n1. seed regression, full batch, SGD (epochs/s)")
    print(f"   seed eager loop     {seed['eager']:12,.0f}")
    print(f"   Trainer (headless)  {seed['trainer']:12,.0f}")
    print(f"   ratio               {verdict(seed['trainer'] / seed['eager'], SEED_RATIO)}")

    x, y = mlp_data(60_000)
    epochs = 1 if args.quick else 2
    fits = {
        "fit": mlp_fit(x, y, epochs),
        "fit32": mlp_fit(x, y, epochs, steps_per_execution=32),
        "trainer": mlp_trainer(x, y, epochs),
    }
    mlp_rates = rounds(fits, n_rounds)
    print("\n2. MLP 64-256-256-1, 60,000 samples, batch 256, Adam (samples/s)")
    print(f"   model.fit (defaults)              {mlp_rates['fit']:12,.0f}")
    print(f"   model.fit steps_per_execution=32  {mlp_rates['fit32']:12,.0f}")
    print(f"   Trainer (headless)                {mlp_rates['trainer']:12,.0f}")
    print(f"   vs fit                {verdict(mlp_rates['trainer'] / mlp_rates['fit'], FIT_RATIO)}")
    print(
        f"   vs fit spe=32         "
        f"{verdict(mlp_rates['trainer'] / mlp_rates['fit32'], FIT32_RATIO)}"
    )


if __name__ == "__main__":
    main()
