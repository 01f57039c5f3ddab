"""Benchmark of the `TrainingPanel` with its live plot on against the headless `Trainer`.

Run it as a script (pytest does not collect it: its name does not start with test_):

    .venv/bin/python tests/bench_panel.py [--quick]

Target of the issue: the panel with its live plot on trains at least 0.9x as fast as the
headless trainer, measured side by side in one process on

1. the seed's linear regression (9 points, full batch, SGD, lr 0.001): epochs/s of
   `Trainer.run(N)` and `TrainingPanel(..., view="widget").run(N)`, N sized so that a run
   lasts a few seconds;
2. MLP 64-256-256-1 on 60,000 synthetic samples, batch 256, Adam, MSE: samples/s over a
   few epochs per run.

Widgets work without a kernel (their comm falls back to a dummy), so the view thread
really renders each PNG and assigns it to the Image: the script counts the changes of
`panel.plot.value` during the timed runs and reports redraws/s, the time of one render
(wall and CPU; wall minus CPU is time spent waiting for the GIL or a core), the view
thread's share of the run's wall time, and where each run's time went: inside the
compiled calls, elsewhere in `Trainer.run`, or outside it (for the panel: starting the
threads, the final redraw and the joins).

Each contender has its own variables or model, made from the same initial values and
seed, is warmed up (traced) before timing, and runs the same epochs in every round; the
contenders run interleaved, round after round, so the noise of a shared machine falls on
all of them. Each figure is the median over the rounds. It prints a table and PASS/FAIL
lines and always exits 0: a report, not a gate.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ipywidgets as widgets  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from bench_trainer import X_SEED, Y_SEED, mlp, mlp_data, seed_loss  # noqa: E402

from tapemagic.jupyter.panel import TrainingPanel  # noqa: E402
from tapemagic.training.trainer import Trainer  # noqa: E402

PANEL_RATIO = 0.9

VIEW_THREAD = "tapemagic-view"


# -- what the view thread does ----------------------------------------------------------


@dataclass
class ViewProbe:
    """Counts the plot's PNG changes and times the view thread's refreshes and renders.

    It observes `panel.plot.value` and wraps the panel's `refresh` and its LossPlot's
    `render` (instance attributes only: the package is left as it is)."""

    redraws: int = 0
    refreshes: list = field(default_factory=list)  # (wall, cpu, start), view thread only
    renders: list = field(default_factory=list)  # (wall, cpu, start)
    bad_png: int = 0
    shown: list = field(default_factory=list)  # (time, epoch) as the status shows it
    drawn: list = field(default_factory=list)  # (time, epochs) as a finished render shows

    def attach(self, panel: TrainingPanel) -> None:
        panel.plot.observe(self._changed, "value")
        panel.status.observe(self._status, "value")
        panel.refresh = self._timed(panel.refresh, self.refreshes, view_only=True)
        render = self._timed(panel._plot.render, self.renders, view_only=False)

        def counted(loss, *args, **kwargs):
            png = render(loss, *args, **kwargs)
            self.drawn.append((time.perf_counter(), len(loss)))
            return png

        panel._plot.render = counted

    def reset(self) -> None:
        self.redraws = self.bad_png = 0
        self.refreshes.clear()
        self.renders.clear()
        self.shown.clear()
        self.drawn.clear()

    def _status(self, change) -> None:
        match = re.search(r"epoch ([\d,]+)", change.new)
        if match:
            self.shown.append((time.perf_counter(), int(match[1].replace(",", ""))))

    def plot_lags(self) -> list[float]:
        """For each status change: how long until a finished render showed that epoch."""
        lags = []
        for t, epoch in self.shown:
            if any(n >= epoch for d, n in self.drawn if d < t):  # drawn before it was said
                lags.append(0.0)
                continue
            later = [d for d, n in self.drawn if n >= epoch]
            if later:
                lags.append(max(0.0, min(later) - t))
        return lags

    def _changed(self, change) -> None:
        self.redraws += 1
        if bytes(change.new[:8]) != b"\x89PNG\r\n\x1a\n":
            self.bad_png += 1

    @staticmethod
    def _timed(fn: Callable, out: list, view_only: bool) -> Callable:
        def wrapper(*args, **kwargs):
            if view_only and threading.current_thread().name != VIEW_THREAD:
                return fn(*args, **kwargs)
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                out.append((time.perf_counter() - wall, time.thread_time() - cpu, wall))

        return wrapper


@dataclass
class Round:
    rate: float  # units per second of the whole call (panel.run or Trainer.run)
    seconds: float  # wall time of the whole call
    trainer_s: float  # wall time inside Trainer.run (for the panel: its worker thread)
    calls_s: float  # inside the compiled calls, as the trainer's history records them
    late_ticks: int = 0  # view refreshes after training ended, beyond the final one
    redraws: int = 0
    refreshes: list = field(default_factory=list)
    renders: list = field(default_factory=list)
    lags: list = field(default_factory=list)  # plot behind status, seconds


class Contender:
    """Something to time: `go()` trains `epochs` more epochs and returns a Round."""

    def __init__(self, units: int, trainer: Trainer, panel: TrainingPanel | None = None):
        self.units, self.trainer, self.panel = units, trainer, panel
        self.epochs = 0
        self.probe = ViewProbe()
        if panel is not None:
            self.probe.attach(panel)
        self._trainer_s = self._trainer_end = 0.0
        run = trainer.run

        def timed_run(*args, **kwargs):  # the panel's worker calls trainer.run too
            start = time.perf_counter()
            try:
                return run(*args, **kwargs)
            finally:
                self._trainer_end = time.perf_counter()
                self._trainer_s = self._trainer_end - start

        trainer.run = timed_run

    def go(self) -> Round:
        self.probe.reset()
        first = len(self.trainer.history)
        start = time.perf_counter()
        if self.panel is not None:
            self.panel.run(self.epochs)
        else:
            self.trainer.run(self.epochs)
        took = time.perf_counter() - start
        p = self.probe
        if p.bad_png:
            raise RuntimeError(f"{p.bad_png} plot values were not PNG images")
        calls = float(np.sum(self.trainer.history["seconds"][first:]))
        return Round(
            self.epochs * self.units / took,
            took,
            self._trainer_s,
            calls,
            max(0, sum(t >= self._trainer_end for *_, t in p.refreshes) - 1),
            p.redraws,
            list(p.refreshes),
            list(p.renders),
            p.plot_lags(),
        )


# -- 1. the seed's regression ---------------------------------------------------------


def seed_trainer() -> Trainer:
    X, Y = tf.constant(X_SEED), tf.constant(Y_SEED)
    a, b = tf.Variable(0.0), tf.Variable(0.0)
    return Trainer(
        params={"a": a, "b": b},
        predict=lambda x: a * x + b,
        loss=seed_loss,
        data=(X, Y),
        optimizer="sgd",
        learning_rate=0.001,
        seed=0,
    )


def seed_contenders(seconds: float) -> dict[str, Contender]:
    headless = Contender(1, seed_trainer())
    panel_trainer = seed_trainer()
    panel = Contender(1, panel_trainer, TrainingPanel(panel_trainer, view="widget"))
    for c in (headless, panel):  # trace, and let the call size adapt
        c.epochs = 2000
        c.go()
    headless.epochs = panel.epochs = 20_000
    rate = headless.go().rate  # calibrate on the headless trainer...
    panel.go()  # ...and keep both histories the same length
    headless.epochs = panel.epochs = max(10_000, int(rate * seconds) // 1000 * 1000)
    return {"headless": headless, "panel": panel}


# -- 2. the MLP -----------------------------------------------------------------------


def mlp_trainer(x, y) -> Trainer:
    return Trainer(model=mlp(), loss="mse", data=(x, y), optimizer="adam", batch_size=256, seed=0)


def mlp_contenders(x, y, epochs: int) -> dict[str, Contender]:
    headless = Contender(len(x), mlp_trainer(x, y))
    panel_trainer = mlp_trainer(x, y)
    panel = Contender(len(x), panel_trainer, TrainingPanel(panel_trainer, view="widget"))
    for c in (headless, panel):  # trace, and let the call size adapt
        c.epochs = 1
        c.go()
        c.epochs = epochs
    return {"headless": headless, "panel": panel}


# -- report ---------------------------------------------------------------------------


def rounds(contenders: dict[str, Contender], n: int) -> dict[str, list[Round]]:
    """n interleaved rounds, the order reversed every other round."""
    out: dict[str, list[Round]] = {k: [] for k in contenders}
    for i in range(n):
        order = list(contenders) if i % 2 == 0 else list(reversed(contenders))
        for name in order:
            out[name].append(contenders[name].go())
    return out


def verdict(ratio: float, target: float) -> str:
    return f"{ratio:6.3f}x  (target >= {target}x: {'PASS' if ratio >= target else 'FAIL'})"


def med(values) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


def report(title: str, unit: str, res: dict[str, list[Round]]) -> float:
    head, panel = res["headless"], res["panel"]
    ratio = med(r.rate for r in panel) / med(r.rate for r in head)
    paired = med(p.rate / h.rate for p, h in zip(panel, head, strict=True))
    print(f"\n{title}\n   rates in {unit}; times in median seconds a run")
    print(
        f"   {'':26}{'median':>11}{'min':>11}{'max':>11}{'run':>8}"
        f"{'calls':>8}{'between':>8}{'outside':>8}"
    )
    for name, rs in (("Trainer (headless)", head), ("TrainingPanel, live plot", panel)):
        rates = [r.rate for r in rs]
        print(
            f"   {name:26}{med(rates):11,.0f}{min(rates):11,.0f}{max(rates):11,.0f}"
            f"{med(r.seconds for r in rs):8.3f}{med(r.calls_s for r in rs):8.3f}"
            f"{med(r.trainer_s - r.calls_s for r in rs):8.3f}"
            f"{med(r.seconds - r.trainer_s for r in rs):8.3f}"
        )
    print(f"   panel / headless          {verdict(ratio, PANEL_RATIO)}")
    print(f"   (median of the rounds' own ratios: {paired:.3f}x)")
    wall = sum(r.seconds for r in panel)
    redraws = sum(r.redraws for r in panel)
    refreshes = [x for r in panel for x in r.refreshes]
    renders = [x for r in panel for x in r.renders]
    rw, rc = [r[0] for r in renders], [r[1] for r in renders]
    print(
        f"   plot redraws              {redraws} PNGs in {wall:.1f} s of panel runs = "
        f"{redraws / wall:.1f}/s (view refreshes {len(refreshes) / wall:.1f}/s)"
    )
    if renders:
        print(
            f"   render, one redraw        median {1000 * med(rw):.1f} ms wall, "
            f"{1000 * med(rc):.1f} ms cpu; max {1000 * max(rw):.1f} ms wall"
        )
    print(
        f"   view thread busy          {100 * sum(w for w, *_ in refreshes) / wall:.1f}% of the "
        f"wall time ({100 * sum(c for _, c, _ in refreshes) / wall:.1f}% cpu), renders "
        f"{100 * sum(rw) / wall:.1f}% ({100 * sum(rc) / wall:.1f}% cpu)"
    )
    lags = [x for r in panel for x in r.lags]
    if lags:
        print(
            f"   plot behind the status    median {med(lags):.2f} s, max {max(lags):.2f} s "
            f"over {len(lags)} status changes (target: at most 0.5 s)"
        )
    late = sum(r.late_ticks > 0 for r in panel)
    outside = 1000 * med(r.seconds - r.trainer_s for r in panel)
    print(
        f"   outside Trainer.run       median {outside:.0f} ms a run; in {late} of {len(panel)} "
        "runs the view\n                             thread waited one more tick (up to 0.1 s) "
        "after training ended"
    )
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds")
    args = parser.parse_args()
    n_rounds = 3 if args.quick else 7
    seconds = 1.0 if args.quick else 2.5
    mlp_epochs = 2 if args.quick else 3
    started = time.perf_counter()
    print(
        f"TensorFlow {tf.__version__}, Keras {keras.__version__}, Python "
        f"{platform.python_version()}, {os.cpu_count()} CPUs, "
        f"GPUs: {len(tf.config.list_physical_devices('GPU'))}, widget comm: "
        f"{type(widgets.Image().comm).__name__}"
    )
    print(
        "run: the whole call; calls: inside the compiled calls (the trainer's own timing);\n"
        "between: the rest of Trainer.run; outside: outside Trainer.run (for the panel: thread\n"
        "start, the final redraw, the joins)"
    )

    seed = seed_contenders(seconds)
    n = seed["headless"].epochs
    seed_ratio = report(
        f"1. seed regression, full batch, SGD, {n:,} epochs a run",
        "epochs/s",
        rounds(seed, n_rounds),
    )
    history = len(seed["panel"].trainer.history)
    print(f"   history at the end: {history:,} epochs")

    x, y = mlp_data(60_000)
    mlp_res = rounds(mlp_contenders(x, y, mlp_epochs), n_rounds)
    mlp_ratio = report(
        f"2. MLP 64-256-256-1, 60,000 samples, batch 256, Adam, {mlp_epochs} epochs a run",
        "samples/s",
        mlp_res,
    )
    print(
        f"\nsummary: seed {seed_ratio:.3f}x, MLP {mlp_ratio:.3f}x (target >= {PANEL_RATIO}x); "
        f"{time.perf_counter() - started:.0f} s"
    )


if __name__ == "__main__":
    main()
