"""Benchmark of `%%tape` against the same hand-written GradientTape code.

Run it as a script (it is not a pytest test and pytest does not collect it):

    .venv/bin/python tests/bench_tape.py [--quick] [--profile]

It measures, in one IPython InteractiveShell and one run, the targets of the issue:

1. `%%tape -q` adds at most 2 ms per cell over the hand-written tape (first and second
   order, both sides through `run_cell`, so IPython's own per-cell cost is on both);
2. at most 10% on a chain of eight 512x512 matmuls;
3. rendering a 1000x1000 gradient takes at most 50 ms, in under 50 KB of HTML;
4. a long cell (250 to 2,000 lines) costs time linear in its length, 2,000 lines within
   1.5x the same cell run plain (each run is a new cell text, so the analysis is paid).
   Three kinds: lines of Python arithmetic around one tensor target (what tapemagic itself
   costs per line: analysis, rewrite, hooks), the same with a new name on every line (what
   is done per name must not be done per name per line), and lines that are each a
   TensorFlow op on the target, where the tape's own recording and backward pass add to
   it; for those the same tape written by hand (its statements at top level, as IPython
   runs a cell's) is timed too, for reference. The arithmetic cells also run back to back
   with no collection forced, full garbage collections included (what a user pays).

The two sides of a comparison run interleaved (ABBA) so that the noise of a shared
machine falls on both; figures are medians after a warm-up. It prints a table and a
PASS/FAIL summary and always exits 0: it is a report, not a gate. `--profile` adds a
cProfile of the `%%tape` cells, restricted to where the time goes.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import os
import platform
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

MS = 1e3
OVERHEAD_MS = 2.0  # target 1: at most 2 ms per cell
RATIO_MAX = 1.10  # target 2: at most 10% slower
RENDER_MS = 50.0  # target 3: rendering at most 50 ms
HTML_BYTES = 50_000  # ... in under 50 KB of HTML
LONG_RATIO_MAX = 1.5  # target 4: 2,000 lines within 1.5x the plain cell
LONG_SIZES = (250, 500, 1000, 2000)

WS = ",".join(f"W{i}" for i in range(1, 9))
CHAIN = "h = x\nfor W in Ws:\n    h = tf.tanh(h @ W)\nloss = tf.reduce_sum(h)"

# (label, %%tape cell, the same computation written by hand)
SMALL_CASES = [
    (
        "1st order  y = x**2",
        "%%tape -q\ny = x ** 2",
        "with tf.GradientTape() as t:\n    t.watch(x)\n    y = x ** 2\ndy_dx = t.gradient(y, x)",
    ),
    (
        "2nd order  -o 2",
        "%%tape -q -o 2\ny = x ** 2",
        "with tf.GradientTape() as t:\n"
        "    t.watch(x)\n"
        "    with tf.GradientTape() as t2:\n"
        "        t2.watch(x)\n"
        "        y = x ** 2\n"
        "    dy_dx = t2.gradient(y, x)\n"
        "d2y_dx2 = t.gradient(dy_dx, x)",
    ),
]
MATMUL_CASES = [
    (
        "matmul -t loss -w W1..W8",
        f"%%tape -q -t loss -w {WS}\n{CHAIN}",
        "with tf.GradientTape() as t:\n"
        + "".join(f"    {line}\n" for line in CHAIN.splitlines())
        + "grads = t.gradient(loss, Ws)",
    ),
    (
        "matmul defaults",
        f"%%tape -q\n{CHAIN}",
        # What the defaults differentiate: the scalar target loss with respect to the
        # Variables W1..W8 (x, a data tensor, is watched too, as the defaults watch it).
        "with tf.GradientTape(persistent=True) as t:\n"
        "    t.watch(x)\n"
        + "".join(f"    {line}\n" for line in CHAIN.splitlines())
        + "grads = t.gradient(loss, Ws)\n"
        "del t",
    ),
]
SETUP = """\
import numpy as np
import tensorflow as tf
x = tf.constant(3.0)
"""
MATMUL_SETUP = """\
_g = tf.random.Generator.from_seed(0)
x = _g.normal((512, 512))
Ws = [tf.Variable(_g.normal((512, 512)) / 512 ** 0.5, name=f"W{i}") for i in range(1, 9)]
W1, W2, W3, W4, W5, W6, W7, W8 = Ws
"""


def long_cell(lines: int, run_no: int, kind: str = "floats") -> str:
    """A cell of `lines` lines, each an op on the last result: Python floats around one
    tensor target ("floats"), the same with a new name on every line ("names"), or
    TensorFlow ops on the target ("tf"). A new text on every run (the comment), so neither
    side reuses an analysis or a compilation of an earlier run."""
    if kind == "tf":
        return "y = x\n" + "y = y * 1.0001 + x\n" * (lines - 1) + f"# run {run_no}\n"
    if kind == "names":
        body = "n0 = 0.5\n" + "".join(
            f"n{i} = n{i - 1} * 1.0001 + 0.25\n" for i in range(1, lines - 1)
        )
        return body + f"y = x * n{lines - 2}\n# run {run_no}\n"
    body = "n = 0.5\n" + "n = n * 1.0001 + 0.25\n" * (lines - 2)
    return body + f"y = x * n\n# run {run_no}\n"


def hand_tape(cell: str) -> str:
    """`cell` under a hand-written tape watching x, its statements at top level."""
    return (
        "t = tf.GradientTape()\nt.__enter__()\nt.watch(x)\n"
        + cell
        + "t.__exit__(None, None, None)\ng = t.gradient(y, x)\n"
    )


def long_cells(ip, kind: str, reps: int) -> list[tuple[str, list[float], list[float], list[float]]]:
    """(label, plain, %%tape, hand-written tape) seconds per size, rounds interleaved with
    the order rotated; the first round is a warm-up."""
    out = []
    for lines in LONG_SIZES:
        times: list[list[float]] = [[], [], []]
        for i in range(reps + 1):
            cells = [
                long_cell(lines, 3 * i, kind),
                "%%tape -q\n" + long_cell(lines, 3 * i + 1, kind),
                hand_tape(long_cell(lines, 3 * i + 2, kind)),
            ]
            for k in [(i + j) % 3 for j in range(3)]:
                # A full collection walks TensorFlow's ~400,000 objects (0.2 to 0.4 s) and
                # falls on whichever cell crosses Python's threshold: start each timed
                # cell clean, so none pays for garbage another left.
                gc.collect()
                taken = time_cell(ip, cells[k])
                if i:
                    times[k].append(taken)
        out.append((f"{lines} lines", *times))
    return out


def back_to_back(ip, lines: int, reps: int) -> tuple[float, float, tuple[int, int]]:
    """Seconds a cell for plain cells in a row, then %%tape cells, with no collection forced
    in between: what a user pays, full garbage collections included (in a kernel holding
    TensorFlow each walks some 400,000 objects, and one falls every few long cells, plain
    or not). Blocks of `reps` cells in the order plain, %%tape, %%tape, plain, each started
    after a full collection, so that drift falls on both sides. Also how many full
    collections each side set off."""
    full = [0]

    def count(phase: str, info: dict) -> None:
        full[0] += phase == "start" and info["generation"] == 2

    seconds, collections = [0.0, 0.0], [0, 0]
    gc.callbacks.append(count)
    try:
        for block, side in enumerate((0, 1, 1, 0)):
            gc.collect()
            full[0] = 0
            prefix = "%%tape -q\n" if side else ""
            start = time.perf_counter()
            for i in range(reps):
                ip.run_cell(prefix + long_cell(lines, 1000 + 100 * block + i))
            seconds[side] += time.perf_counter() - start
            collections[side] += full[0]
    finally:
        gc.callbacks.remove(count)
    return seconds[0] / (2 * reps), seconds[1] / (2 * reps), (collections[0], collections[1])


RENDER_SETUP = "W = tf.Variable(tf.random.normal((1000, 1000), seed=0))"
RENDER_CELL = "%%tape -q\ny = tf.reduce_sum(W * W)"


@dataclass
class Pair:
    label: str
    hand: list[float]  # seconds per cell
    tape: list[float]

    @property
    def hand_ms(self) -> float:
        return statistics.median(self.hand) * MS

    @property
    def tape_ms(self) -> float:
        return statistics.median(self.tape) * MS

    @property
    def overhead_ms(self) -> float:
        return self.tape_ms - self.hand_ms

    @property
    def ratio(self) -> float:
        return self.tape_ms / self.hand_ms

    @property
    def paired_iqr_ms(self) -> tuple[float, float]:
        """Spread of tape - hand over adjacent runs: how much to trust the overhead."""
        diffs = sorted((t - h) * MS for t, h in zip(self.tape, self.hand, strict=True))
        q = statistics.quantiles(diffs, n=4)
        return q[0], q[2]


def make_shell():
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    config = Config()
    config.HistoryManager.enabled = False  # no sqlite writes, and none in ~/.ipython
    ip = InteractiveShell.instance(config=config)
    ip.run_line_magic("load_ext", "tapemagic")
    run(ip, SETUP)
    return ip


def run(ip, cell: str) -> None:
    result = ip.run_cell(cell)
    if not result.success:
        error = result.error_in_exec or result.error_before_exec
        sys.exit(f"bench_tape: this cell failed ({error!r}):\n{cell}")


def time_cell(ip, cell: str) -> float:
    start = time.perf_counter()
    ip.run_cell(cell)
    return time.perf_counter() - start


def interleaved(ip, label: str, tape: str, hand: str, reps: int, warmup: int) -> Pair:
    """ABBA: each side runs first half of the time, so drift and order cancel out."""
    run(ip, tape)
    run(ip, hand)
    for _ in range(warmup):
        time_cell(ip, tape)
        time_cell(ip, hand)
    gc.collect()
    pair = Pair(label, [], [])
    for i in range(reps):
        if i % 2:
            pair.hand.append(time_cell(ip, hand))
            pair.tape.append(time_cell(ip, tape))
        else:
            pair.tape.append(time_cell(ip, tape))
            pair.hand.append(time_cell(ip, hand))
    return pair


def check_same(ip, pairs: list[tuple[str, str, int, str]]) -> str:
    """The two sides must compute the same gradients, or the comparison means nothing."""
    import numpy as np

    result = ip.user_ns["_tape"]
    worst = 0.0
    for target, source, order, expr in pairs:
        mine = np.asarray(result.gradient(target, source, order))
        theirs = np.asarray(eval(expr, ip.user_ns))
        if mine.shape != theirs.shape or not np.allclose(mine, theirs, rtol=1e-4, atol=1e-5):
            return f"MISMATCH {target}/{source} vs {expr}"
        scale = max(float(np.abs(theirs).max()), 1e-30)
        worst = max(worst, float(np.abs(mine - theirs).max()) / scale)
    return f"same gradients (max rel. diff {worst:.1e})"


def time_call(fn: Callable[[], object], reps: int) -> tuple[float, list[float]]:
    """(first call, later calls) in ms."""
    start = time.perf_counter()
    fn()
    first = (time.perf_counter() - start) * MS
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * MS)
    return first, times


def profile(ip, cell: str, runs: int, title: str, top: int = 22) -> None:
    """Cumulative time of tapemagic's functions and of tape.gradient, per cell.

    cProfile inflates small Python calls several times over: read it for where the
    time goes and how often things are called, not for absolute figures."""
    for _ in range(2):
        run(ip, cell)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(runs):
        run(ip, cell)
    profiler.disable()
    stats = pstats.Stats(profiler, stream=io.StringIO()).stats
    rows = []
    for (path, line, func), (_cc, ncalls, _tt, cum, _callers) in stats.items():
        interesting = "tapemagic" in path or func in ("gradient", "run_cell", "mat_mul")
        if interesting and cum / runs * MS >= 0.02:
            where = f"{os.path.basename(path)}:{line}({func})"
            rows.append((cum / runs * MS, ncalls / runs, where))
    print(f"\nprofile of {title!r}: ms per cell (cumulative), calls per cell, {runs} cells")
    for cum, ncalls, where in sorted(rows, reverse=True)[:top]:
        print(f"  {cum:9.3f} ms  {ncalls:7.1f}x  {where}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (~20 s)")
    parser.add_argument("--profile", action="store_true", help="also cProfile the %%tape cells")
    args = parser.parse_args()
    reps_small, warm_small = (150, 20) if args.quick else (800, 60)
    reps_mm, warm_mm = (6, 2) if args.quick else (20, 3)
    reps_render = 10 if args.quick else 40

    t_start = time.perf_counter()
    ip = make_shell()
    import IPython
    import tensorflow as tf

    print(
        f"tapemagic benchmark: Python {platform.python_version()}, TF {tf.__version__}, "
        f"IPython {IPython.__version__}, {os.cpu_count()} CPUs"
        f"{', quick' if args.quick else ''}"
    )

    # -- 1. per-cell overhead ----------------------------------------------------------
    small = [interleaved(ip, *case, reps_small, warm_small) for case in SMALL_CASES]
    run(ip, SMALL_CASES[0][1])
    run(ip, SMALL_CASES[0][2])
    checks = [check_same(ip, [("y", "x", 1, "dy_dx")])]
    run(ip, SMALL_CASES[1][1])
    run(ip, SMALL_CASES[1][2])
    checks.append(check_same(ip, [("y", "x", 1, "dy_dx"), ("y", "x", 2, "d2y_dx2")]))

    # -- 2. matmul chain ---------------------------------------------------------------
    run(ip, MATMUL_SETUP)
    matmul = [interleaved(ip, *case, reps_mm, warm_mm) for case in MATMUL_CASES]
    run(ip, MATMUL_CASES[0][1])
    run(ip, MATMUL_CASES[0][2])
    checks.append(check_same(ip, [("loss", f"W{i}", 1, f"grads[{i - 1}]") for i in range(1, 9)]))
    run(ip, MATMUL_CASES[1][1])
    run(ip, MATMUL_CASES[1][2])
    defaults = ip.user_ns["_tape"]
    n_default = len(defaults.derivatives)
    default_sources = ",".join(defaults.sources)

    print(f"\n{'case':<26}{'hand ms':>10}{'%%tape ms':>11}{'overhead':>11}{'ratio':>8}")
    print(f"{'':<26}{'median':>10}{'median':>11}{'ms':>11}{'':>8}  paired Δ p25..p75 ms, n")
    for p in small + matmul:
        lo, hi = p.paired_iqr_ms
        print(
            f"{p.label:<26}{p.hand_ms:>10.3f}{p.tape_ms:>11.3f}{p.overhead_ms:>11.3f}"
            f"{p.ratio:>8.2f}  {lo:+.3f}..{hi:+.3f}, {len(p.tape)}"
        )
    print(f"checks: {'; '.join(checks)}")
    print(
        f"matmul defaults: targets {','.join(defaults.targets)}, sources {default_sources} "
        f"({n_default} derivatives)"
    )

    # -- 4. long cells -------------------------------------------------------------------
    reps_long = 3 if args.quick else 7
    long_ratio = {}
    kinds = (
        ("floats", "n = n * 1.0001 + 0.25"),
        ("names", "n9 = n8 * 1.0001 + 0.25"),
        ("tf", "y = y * 1.0001 + x"),
    )
    for kind, title in kinds:
        rows = long_cells(ip, kind, reps_long)
        print(
            f"\nlong cell, {title:<24}{'plain ms':>10}{'%%tape ms':>11}{'ratio':>8}"
            f"{'by hand ms':>12}"
        )
        for label, plain, tape, hand in rows:
            p, t, h = (statistics.median(v) * MS for v in (plain, tape, hand))
            print(f"{label:<35}{p:>10.1f}{t:>11.1f}{t / p:>8.2f}{h:>12.1f}")
        first, last = (statistics.median(rows[k][2]) for k in (0, -1))
        print(
            f"%%tape time, {LONG_SIZES[-1]} lines / {LONG_SIZES[0]} lines: {last / first:.1f} "
            f"(linear: {LONG_SIZES[-1] / LONG_SIZES[0]:.0f})"
        )
        long_ratio[kind] = last / statistics.median(rows[-1][1])
    reps_b2b = 6 if args.quick else 15
    plain_s, tape_s, collections = back_to_back(ip, LONG_SIZES[-1], reps_b2b)
    print(
        f"back to back, garbage collection included ({2 * reps_b2b} cells a side of "
        f"{LONG_SIZES[-1]} lines each): plain {plain_s * MS:.0f} ms a cell, %%tape "
        f"{tape_s * MS:.0f} ms a cell ({tape_s / plain_s:.2f}x); full collections: plain "
        f"{collections[0]}, %%tape {collections[1]}"
    )

    # -- 3. rendering a 1000x1000 gradient ---------------------------------------------
    from tapemagic.display import render

    run(ip, RENDER_SETUP)
    run(ip, RENDER_CELL)
    result = ip.user_ns["_tape"]
    html = render.to_html(result)
    html_bytes = len(html.encode())
    renders = {
        "render.to_html": lambda: render.to_html(result),
        "html formatter": lambda: ip.display_formatter.formatters["text/html"](result),
        "markdown formatter": lambda: ip.display_formatter.formatters["text/markdown"](result),
        "render.to_text (repr)": lambda: render.to_text(result),
        "display formatter, all": lambda: ip.display_formatter.format(result),
    }
    gc.collect()
    timed = {name: time_call(fn, reps_render) for name, fn in renders.items()}
    print(f"\n{'render, 1000x1000 gradient':<26}{'first ms':>10}{'median ms':>11}{'max ms':>9}")
    for name, (first, times) in timed.items():
        print(f"{name:<26}{first:>10.2f}{statistics.median(times):>11.2f}{max(times):>9.2f}")
    print(f"HTML size: {html_bytes} bytes = {html_bytes / 1000:.1f} KB")

    if args.profile:
        profile(ip, SMALL_CASES[0][1], 200, SMALL_CASES[0][1])
        profile(ip, MATMUL_CASES[0][1], 5, MATMUL_CASES[0][1].splitlines()[0])
        profile(ip, MATMUL_CASES[0][2], 5, "the same, hand-written", top=4)

    # -- summary -----------------------------------------------------------------------
    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    html_ms = statistics.median(timed["render.to_html"][1])
    display_ms = statistics.median(timed["display formatter, all"][1])
    rows = [
        (f"%%tape overhead, 1st order <= {OVERHEAD_MS:g} ms", f"{small[0].overhead_ms:.3f} ms"),
        (f"%%tape overhead, 2nd order <= {OVERHEAD_MS:g} ms", f"{small[1].overhead_ms:.3f} ms"),
        (f"matmul chain, -w W1..W8 <= {RATIO_MAX:.2f}x", f"{matmul[0].ratio:.2f}x"),
        (f"matmul chain, defaults <= {RATIO_MAX:.2f}x", f"{matmul[1].ratio:.2f}x"),
        (f"render.to_html 1000x1000 <= {RENDER_MS:g} ms", f"{html_ms:.2f} ms"),
        (f"display, all formats <= {RENDER_MS:g} ms", f"{display_ms:.2f} ms"),
        (f"HTML size < {HTML_BYTES / 1000:g} KB", f"{html_bytes / 1000:.1f} KB"),
        (
            f"{LONG_SIZES[-1]}-line cell <= {LONG_RATIO_MAX:g}x plain",
            f"{long_ratio['floats']:.2f}x",
        ),
        (
            f"the same, back to back <= {LONG_RATIO_MAX:g}x plain",
            f"{tape_s / plain_s:.2f}x",
        ),
        (
            f"the same, a name a line <= {LONG_RATIO_MAX:g}x plain",
            f"{long_ratio['names']:.2f}x",
        ),
        (
            f"the same, TF ops <= {LONG_RATIO_MAX:g}x plain",
            f"{long_ratio['tf']:.2f}x",
        ),
    ]
    oks = [
        small[0].overhead_ms <= OVERHEAD_MS,
        small[1].overhead_ms <= OVERHEAD_MS,
        matmul[0].ratio <= RATIO_MAX,
        matmul[1].ratio <= RATIO_MAX,
        html_ms <= RENDER_MS,
        display_ms <= RENDER_MS,
        html_bytes < HTML_BYTES,
        long_ratio["floats"] <= LONG_RATIO_MAX,
        tape_s / plain_s <= LONG_RATIO_MAX,
        long_ratio["names"] <= LONG_RATIO_MAX,
        long_ratio["tf"] <= LONG_RATIO_MAX,
    ]
    print("\nsummary")
    for (target, figure), ok in zip(rows, oks, strict=True):
        print(f"  {target:<38}{figure:>12}  {verdict(ok)}")
    print(f"total {time.perf_counter() - t_start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
