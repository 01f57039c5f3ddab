"""Benchmark of gradient health: what recording per-layer statistics costs the Trainer.

Run it as a script (pytest does not collect it: its name does not start with test_):

    .venv/bin/python tests/bench_health.py [--quick]

Targets, each health=True trainer against the same one with health=False, side by side in
one process (interleaved rounds, medians, after a warm-up):

1. the seed's linear regression (9 points, full batch, SGD): epochs/s at least 0.9x;
2. MLP 64-256-256-1 on 60,000 synthetic samples, batch 256, Adam, MSE: samples/s at least
   0.95x (its two ReLU layers' dead-unit statistic included).

It prints a table and PASS/FAIL lines and always exits 0: a report, not a gate.
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
import tensorflow as tf  # noqa: E402
from bench_trainer import X_SEED, Y_SEED, mlp, mlp_data, seed_loss  # noqa: E402

from tapemagic.training.trainer import Trainer  # noqa: E402

SEED_RATIO = 0.9
MLP_RATIO = 0.95


def seed(health: bool, seconds: float) -> Callable[[], float]:
    X, Y = tf.constant(X_SEED), tf.constant(Y_SEED)
    a, b = tf.Variable(0.0), tf.Variable(0.0)
    trainer = Trainer(
        params={"a": a, "b": b}, predict=lambda x: a * x + b, loss=seed_loss, data=(X, Y),
        optimizer="sgd", learning_rate=0.001, health=health,
    )  # fmt: skip
    trainer.run(2000)  # trace, and let the call size adapt
    state = {"epochs": 2000}

    def go() -> float:
        epochs = state["epochs"]
        start = time.perf_counter()
        trainer.run(epochs)
        took = time.perf_counter() - start
        state["epochs"] = max(1000, int(epochs * seconds / took))
        return epochs / took

    go()  # calibrate to about `seconds` per round
    return go


def mlp_trainer(health: bool, x, y, epochs: int) -> Callable[[], float]:
    trainer = Trainer(
        model=mlp(), loss="mse", data=(x, y), optimizer="adam", batch_size=256, health=health
    )
    trainer.run(1)  # warm-up: trace, and let the call size adapt

    def go() -> float:
        start = time.perf_counter()
        trainer.run(epochs)
        return epochs * len(x) / (time.perf_counter() - start)

    return go


def rounds(contenders: dict[str, Callable[[], float]], n: int) -> dict[str, float]:
    """Median rate of each contender over n interleaved rounds."""
    rates: dict[str, list[float]] = {k: [] for k in contenders}
    for i in range(n):
        order = list(contenders) if i % 2 == 0 else list(reversed(contenders))
        for name in order:
            rates[name].append(contenders[name]())
    return {k: statistics.median(v) for k, v in rates.items()}


def verdict(ratio: float, target: float) -> str:
    return f"{ratio:6.3f}x  (target >= {target}x: {'PASS' if ratio >= target else 'FAIL'})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds")
    args = parser.parse_args()
    n_rounds = 3 if args.quick else 7
    seconds = 0.5 if args.quick else 1.5
    print(
        f"TensorFlow {tf.__version__}, Keras {keras.__version__}, Python "
        f"{platform.python_version()}, {os.cpu_count()} CPUs, "
        f"GPUs: {len(tf.config.list_physical_devices('GPU'))}"
    )
    s = rounds({"off": seed(False, seconds), "on": seed(True, seconds)}, n_rounds)
    print("\n1. seed regression, full batch, SGD (epochs/s)")
    print(f"   health=False   {s['off']:12,.0f}")
    print(f"   health=True    {s['on']:12,.0f}")
    print(f"   ratio          {verdict(s['on'] / s['off'], SEED_RATIO)}")

    x, y = mlp_data(60_000)
    epochs = 1 if args.quick else 2
    m = rounds({"off": mlp_trainer(False, x, y, epochs), "on": mlp_trainer(True, x, y, epochs)},
               n_rounds)  # fmt: skip
    print("\n2. MLP 64-256-256-1, 60,000 samples, batch 256, Adam (samples/s)")
    print(f"   health=False   {m['off']:12,.0f}")
    print(f"   health=True    {m['on']:12,.0f}")
    print(f"   ratio          {verdict(m['on'] / m['off'], MLP_RATIO)}")


if __name__ == "__main__":
    main()
