"""Subprocess side of tests/test_distribute.py: runs with TensorFlow fresh, prints JSON.

Logical CPU devices and a multi-worker cluster must be set up before TensorFlow starts
its runtime, and pytest runs every test in one process: so each distributed case runs
here, in a process of its own, and prints one line `RESULT {json}` at the end.

    python tests/distribute_worker.py mirrored
    python tests/distribute_worker.py worker stop|resume CHECKPOINT_DIR    (TF_CONFIG set)
    python tests/distribute_worker.py lonely TIMEOUT                       (TF_CONFIG set)
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import threading
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

X = [1.0, 4.0, 6, 3, 3, 4, 5, 6, 7]
Y = [0.25, 1.2, 0.79, 0.52, 1.6, 1.7, 1.9, 2, 2]
WAIT = 20.0


def report(result: dict) -> None:
    print("RESULT " + json.dumps(result), flush=True)


def error_of(fn) -> str | None:
    """'Type: message' of what fn raises, None if it returns."""
    try:
        fn()
    except Exception as err:  # the tests read the message
        return f"{type(err).__name__}: {err}"
    return None


# -- one machine, two logical CPUs ------------------------------------------------------------


def mirrored() -> dict:
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import numpy as np

    from tapemagic import TrainingPanel
    from tapemagic.training.trainer import Trainer

    strategy = tf.distribute.MirroredStrategy(["/CPU:0", "/CPU:1"])
    out: dict = {"replicas": strategy.num_replicas_in_sync}

    def sum_sq(y_true, y_pred):
        return tf.reduce_sum(tf.square(y_true - y_pred))

    def seed(scope: bool, **kwargs):
        with strategy.scope() if scope else tf.device("/CPU:0"):
            a, b = tf.Variable(0.0), tf.Variable(0.0)
        kwargs = {"optimizer": "sgd", "learning_rate": 0.001, **kwargs}
        if scope:
            kwargs["strategy"] = strategy
        t = Trainer(params={"a": a, "b": b}, predict=lambda x: a * x + b, loss=sum_sq, **kwargs)
        return t

    # the seed's regression, full batch and in batches of 4 (the last: 1 sample, 0 + 1)
    t = seed(True, data=(X, Y))
    t.run(6)
    out["seed"] = {
        "loss": t.history["loss"],
        "a": t.history["a"],
        "b": t.history["b"],
        "grad_norm": t.history["grad_norm"],
        "distribution": t.distribution(),
        "repr": repr(t),
    }
    one, two = (
        seed(False, data=(X, Y), batch_size=4, seed=5),
        seed(True, data=(X, Y), batch_size=4, seed=5),
    )
    out["seed_batches"] = {"one": one.run(4)["loss"], "two": two.run(4)["loss"]}

    # Dense(1) + Adam(0.07) from zeros, the seed's second table
    with strategy.scope():
        dense = keras.Sequential([keras.layers.Dense(1, kernel_initializer="zeros")])
        adam = keras.optimizers.Adam(0.07)
    xc, yc = np.array(X, "f4")[:, None], np.array(Y, "f4")[:, None]
    t = Trainer(model=dense, loss=sum_sq, data=(xc, yc), optimizer=adam, strategy=strategy)
    out["dense_adam"] = t.run(5)["loss"]

    # an MLP with a mean loss, batches, validation and a metric: against one device
    rng = np.random.default_rng(0)
    xm = rng.normal(size=(250, 8)).astype("f4")
    ym = np.tanh(xm @ rng.normal(size=(8, 1))).astype("f4")

    def mlp():
        keras.utils.set_random_seed(1)
        return keras.Sequential(
            [keras.Input((8,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(1)]
        )

    common = dict(loss="mse", optimizer="adam", learning_rate=0.01, batch_size=64, seed=3,
                  metrics=["mae"], validation_split=0.2)  # fmt: skip
    ref = Trainer(model=mlp(), data=(xm, ym), **common)
    with strategy.scope():
        model = mlp()
    dist = Trainer(model=model, data=(xm, ym), strategy=strategy, **common)
    ref.run(8)
    dist.run(8)
    cols = ("loss", "val_loss", "mae", "val_mae", "grad_norm")
    out["mlp"] = {
        "one": {k: ref.history[k] for k in cols},
        "two": {k: dist.history[k] for k in cols},
        "reduction": dist.loss_reduction,
        "distribution": dist.distribution(),
    }

    # a Dataset goes through experimental_distribute_dataset
    ds = tf.data.Dataset.from_tensor_slices((xm, ym)).batch(50)
    one = Trainer(model=mlp(), loss="mse", data=ds, optimizer="sgd", learning_rate=0.05)
    with strategy.scope():
        model = mlp()
    two = Trainer(model=model, loss="mse", data=ds, optimizer="sgd", learning_rate=0.05,
                  strategy=strategy)  # fmt: skip
    out["dataset"] = {"one": one.run(3)["loss"], "two": two.run(3)["loss"]}
    val = tf.data.Dataset.from_tensor_slices((xm[:90], ym[:90])).batch(40)
    one = Trainer(model=mlp(), loss="mse", data=ds, optimizer="sgd", learning_rate=0.05,
                  validation_data=val, metrics=["mae"])  # fmt: skip
    with strategy.scope():
        model = mlp()
    two = Trainer(model=model, loss="mse", data=ds, optimizer="sgd", learning_rate=0.05,
                  validation_data=val, metrics=["mae"], strategy=strategy)  # fmt: skip
    one.run(2)
    two.run(2)
    out["dataset_val"] = {t: {k: h.history[k] for k in ("val_loss", "mae", "val_mae")}
                          for t, h in (("one", one), ("two", two))}  # fmt: skip

    # a NaN: the fault pauses the run, weights back to finite. (Recovery never steps back
    # past the start of the call it happened in: one epoch per call makes both the same.)
    out["fault"] = {}
    diverging = dict(data=(X, Y), learning_rate=1.0, checkpoint_every=1)
    for name, t in (("one", seed(False, **diverging)), ("two", seed(True, **diverging))):
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            t.run(50)
        values = list(t.param_values().values())
        out["fault"][name] = {
            "message": t.fault.message if t.fault else None,
            "finite": bool(np.isfinite(values).all()),
            "epoch": t.epoch,
        }

    # controls in a worker thread: pause holds, step adds one, a new rate applies, stop ends
    t = seed(True, data=(X, Y), learning_rate=1e-4)
    epochs = []
    t.add_listener(lambda r: epochs.append(r.epoch))
    worker = threading.Thread(target=t.run, args=(10**7,), daemon=True)
    worker.start()
    deadline = time.monotonic() + WAIT
    while len(epochs) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    t.pause()
    held = t.wait_paused(WAIT)
    at_pause = t.epoch
    time.sleep(0.3)
    still = t.epoch
    t.step()
    time.sleep(0.05)
    t.wait_paused(WAIT)
    after_step = t.epoch
    t.learning_rate = 2e-4
    t.resume()
    time.sleep(0.3)
    t.request_stop()
    ended = t.wait(WAIT)
    rates = sorted({r for r in t.history["learning_rate"]})
    out["controls"] = {
        "held": held, "at_pause": at_pause, "still": still, "after_step": after_step,
        "ended": ended, "rates": rates, "epochs": t.epoch,
    }  # fmt: skip

    # checkpoints: 3 epochs, a new trainer resumes, 3 more = 6 in one go
    with tempfile.TemporaryDirectory() as directory:
        first = seed(True, data=(X, Y), checkpoint_dir=directory)
        first.run(3)
        again = seed(True, data=(X, Y), checkpoint_dir=directory)
        resumed_at = again.epoch
        again.run(3)
        out["resume"] = {"at": resumed_at, "loss": again.history["loss"]}

    # the panel: the strategy line instead of the device dropdown
    with strategy.scope():
        a, b = tf.Variable(0.0), tf.Variable(0.0)
    panel = TrainingPanel(params=[a, b], predict=lambda x: a * x + b, loss=sum_sq,
                          data=(np.arange(64.0), np.arange(64.0)), batch_size=32,
                          strategy=strategy, view="widget")  # fmt: skip
    panel.run(2)
    out["panel"] = {
        "strategy": panel.strategy.value,
        "device_display": panel.device.layout.display,
        "epochs": len(panel.trainer.history),
    }
    panel.close()

    # bad configurations: clear errors, at once
    a_out = tf.Variable(0.0)  # made before entering the scope
    model_out = mlp()
    model_out.build((None, 8))
    with strategy.scope():
        a_in = tf.Variable(0.0)
    adam_out = keras.optimizers.Adam()
    out["errors"] = {
        "params_outside": error_of(lambda: Trainer(
            params=[a_out], predict=lambda x: a_out * x, loss=sum_sq, data=(X, Y),
            strategy=strategy)),
        "model_outside": error_of(lambda: Trainer(
            model=model_out, loss="mse", data=(xm, ym), strategy=strategy)),
        "optimizer_outside": error_of(lambda: Trainer(
            params=[a_in], predict=lambda x: a_in * x, loss=sum_sq, data=(X, Y),
            optimizer=adam_out, strategy=strategy)),
        "neither_sum_nor_mean": error_of(lambda: Trainer(
            params=[a_in], predict=lambda x: a_in * x, data=(X, Y), strategy=strategy,
            loss=lambda y, p: tf.reduce_max(tf.abs(y - p)))),
        "step_style": error_of(lambda: Trainer(
            step=lambda x, y: 0.0, data=(X, Y), strategy=strategy)),
        "unknown_length": error_of(lambda: Trainer(
            model=model, loss="mse", data=ds.filter(lambda x, y: True), strategy=strategy)),
        "device_too": error_of(lambda: Trainer(
            params=[a_in], predict=lambda x: a_in * x, loss=sum_sq, data=(X, Y),
            device="CPU", strategy=strategy)),
    }  # fmt: skip
    t = Trainer(params=[a_in], predict=lambda x: a_in * x, data=(X, Y), strategy=strategy,
                loss=lambda y, p: tf.reduce_max(tf.abs(y - p)), loss_reduction="mean")  # fmt: skip
    out["forced_reduction"] = t.loss_reduction
    return out


# -- several processes ----------------------------------------------------------------------


def mlp_case(scope=None) -> tuple:
    """An MLP (fixed first weights) and its data, the same in every process."""
    import keras
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 8)).astype("f4")
    y = np.tanh(x @ rng.normal(size=(8, 1))).astype("f4")
    with scope or contextlib.nullcontext():
        model = keras.Sequential(
            [keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(1)]
        )
    model.set_weights([rng.normal(scale=0.3, size=w.shape).astype("f4") for w in model.weights])
    kwargs = dict(loss="mse", optimizer="adam", learning_rate=0.01, batch_size=48, seed=3)
    return model, (x, y), kwargs


def drive_controls(trainer) -> dict:
    """From another thread, as a panel would: pause, one step, resume, stop."""
    start = trainer.epoch
    thread = threading.Thread(target=trainer.run, args=(10**6,), daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT
    while trainer.epoch < start + 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    trainer.pause()
    held = trainer.wait_paused(WAIT)
    at_pause = trainer.epoch
    time.sleep(0.3)
    still = trainer.epoch
    trainer.step()
    while trainer.epoch < at_pause + 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    trainer.wait_paused(WAIT)
    after_step = trainer.epoch
    trainer.resume()
    time.sleep(0.2)
    trainer.request_stop()
    ended = trainer.wait(WAIT)
    return {"held": held, "at_pause": at_pause, "still": still, "after_step": after_step,
            "ended": ended, "epoch": trainer.epoch}  # fmt: skip


def worker(scenario: str, directory: str) -> dict:
    """The seed's regression across the workers of TF_CONFIG.

    stop: each side's panel runs 6 epochs with a checkpoint each epoch; the chief stops
    the run after epoch 2. Then an MLP with a mean loss trains 3 epochs in batches.
    resume: resume from the chief's checkpoint; the chief runs 3 epochs, then 1 at a
    new learning rate, then a run it pauses, steps, resumes and stops from another
    thread; then it releases the workers, which follow() all along.
    """
    from tapemagic.distribute import multi_worker_strategy

    strategy = multi_worker_strategy(timeout=30)
    import tensorflow as tf

    from tapemagic import TrainingPanel
    from tapemagic.training.trainer import Trainer

    with strategy.scope():
        a, b = tf.Variable(0.0), tf.Variable(0.0)
    trainer = Trainer(
        params={"a": a, "b": b}, predict=lambda x: a * x + b, data=(X, Y),
        loss=lambda y, p: tf.reduce_sum(tf.square(y - p)), optimizer="sgd",
        learning_rate=0.001, strategy=strategy, checkpoint_dir=directory, checkpoint_every=1,
    )  # fmt: skip
    out = {
        "chief": trainer.is_chief,
        "start": trainer.epoch,
        "distribution": trainer.distribution(),
    }
    if scenario == "stop":
        if trainer.is_chief:
            trainer.add_listener(lambda r: r.epoch == 2 and trainer.request_stop())
        panel = TrainingPanel(trainer, view="widget")  # the worker's shows as text
        out["view"] = panel.view
        panel.run(6)
        out["panel_error"] = None if panel.error is None else repr(panel.error)
        panel.close()
        model, data, kwargs = mlp_case(strategy.scope())
        out["mlp"] = Trainer(model=model, data=data, strategy=strategy, **kwargs).run(3)["loss"]
    elif trainer.is_chief:
        trainer.run(3)
        trainer.learning_rate = 0.002
        trainer.run(1)
        out["controls"] = drive_controls(trainer)
        trainer.close()
    else:
        trainer.follow()
    history = trainer.history
    out.update(epoch=trainer.epoch, loss=history["loss"], params=trainer.param_values())
    out["learning_rate"] = history["learning_rate"]
    return out


def lonely(timeout: float) -> dict:
    """A cluster in which the other task never starts: a ClusterError, not a hang."""
    from tapemagic.distribute import multi_worker_strategy

    start = time.monotonic()
    error = error_of(lambda: multi_worker_strategy(timeout=timeout))
    return {"error": error, "seconds": time.monotonic() - start}


if __name__ == "__main__":
    warnings.simplefilter("ignore")
    mode = sys.argv[1]
    if mode == "mirrored":
        report(mirrored())
    elif mode == "worker":
        report(worker(sys.argv[2], sys.argv[3]))
    elif mode == "lonely":
        report(lonely(float(sys.argv[2])))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    sys.stdout.flush()
    os._exit(0)  # a cluster's runtime may wait on its peers at exit: the result is out
