"""Compare's copies in one compiled call: their weights stacked, one forward and backward
pass for all of them, and each optimizer's update written out as Keras computes it.

A copy's epoch on a small problem is a few microseconds of small ops, most of them the
optimizer's update, applied by Keras one variable at a time. Here every copy's weights
are one row of a matrix (copies x weights) carried through the compiled loop as a tensor,
the forward pass is vectorised over the rows (`tf.vectorized_map`), and each copy's update
is done once on its whole row with the very operations Keras uses, so the numbers are bit
for bit those of a single trainer (tests/test_compare.py checks it) while the ops no longer
add up copy after copy. The weights and the optimizers' state are read at the start of a
call and written back at its end.

Every copy keeps its own `Trainer` (history, faults, controls): its compiled loop is
wrapped in a `Seat` at a shared `Table`. A call sits down with its plan; once every copy
that is running, not paused and not on its own has sat down, those asking for the same
number of epochs run in one fused call and the others in their own loops. A copy whose
call faulted goes on alone (its trainer replays up to the fault with its own loop, which
gives the same numbers).

Where the model allows it: Variables with a predict function, data in memory trained
full-batch (one step an epoch), no validation data, metrics or gradient health, float32
weights that the history records (up to 20), and optimizers by name (`OPTIMIZERS`).
Elsewhere `Comparison` runs the copies one thread each.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import tensorflow as tf

from tapemagic.training.data import ArrayData
from tapemagic.training.loop import CallResult, CompiledLoop
from tapemagic.training.objectives import scalar_loss
from tapemagic.variables import unwrap

WAIT_S = 0.02  # a seated call looks again this often (a copy may have paused meanwhile)
MAX_GROUPS = 8  # compiled calls kept, one per group of copies seated together

# Ops whose every element comes out the same whatever the array's layout: correctly
# rounded arithmetic, comparisons, selections and moves. Not exp, log, sin, tanh, pow...:
# their vectorised and scalar forms differ in the last bit, and an element's form depends
# on where it lands in the array. Not sqrt: TensorFlow rewrites x / sqrt(y) as x * rsqrt(y),
# which is one of those. Nor matmul: batched over copies it sums in another order.
EXACT_OPS = frozenset(
    [
        "Abs",
        "AddN",
        "Add",
        "AddV2",
        "BroadcastTo",
        "Cast",
        "ConcatV2",
        "Const",
        "ExpandDims",
        "Fill",
        "Greater",
        "GreaterEqual",
        "Identity",
        "IdentityN",
        "Less",
        "LessEqual",
        "Maximum",
        "Mean",
        "Minimum",
        "Mul",
        "Neg",
        "NoOp",
        "OnesLike",
        "Pack",
        "Placeholder",
        "Prod",
        "RealDiv",
        "Relu",
        "Reshape",
        "Select",
        "SelectV2",
        "Shape",
        "Sign",
        "Size",
        "Square",
        "SquaredDifference",
        "Squeeze",
        "StopGradient",
        "StridedSlice",
        "Sub",
        "Sum",
        "Tile",
        "ZerosLike",
    ]
)
# A sum of up to this many floats comes out the same for a row of a (copies, n) array as
# for the array alone; beyond it the whole-array sum is taken in blocks, in another order.
MAX_SUMMED = 8192


# -- each optimizer's update, as Keras writes it, on a copy's whole row of weights --------


@dataclass(frozen=True)
class Rule:
    """One optimizer's update: the Keras slot variables it keeps per weight, and the step
    (weights, gradient, learning rate, step number, slots) -> (new weights, new slots)."""

    slots: tuple[str, ...]  # the optimizer's attribute lists, one variable per weight each
    step: Callable[..., tuple[tf.Tensor, list[tf.Tensor]]]
    counts: bool = False  # the step uses the step number (Adam's bias correction)


def _sgd(opt: Any) -> Rule:
    momentum = opt.momentum
    if momentum == 0:
        return Rule((), lambda w, g, lr, t, s: (w - g * lr, []))

    def step(w, g, lr, t, s):
        m = s[0] * tf.constant(momentum, w.dtype) - g * lr
        return w + m, [m]

    return Rule(("momentums",), step)


def _adam(opt: Any) -> Rule:
    b1, b2, eps = opt.beta_1, opt.beta_2, opt.epsilon

    def step(w, g, lr, t, s):
        m, v = s
        b1p = tf.pow(tf.constant(b1, w.dtype), t)
        b2p = tf.pow(tf.constant(b2, w.dtype), t)
        alpha = lr * tf.sqrt(1 - b2p) / (1 - b1p)
        m = m + (g - m) * (1 - b1)
        v = v + (tf.square(g) - v) * (1 - b2)
        return w - (m * alpha) / (tf.sqrt(v) + eps), [m, v]

    return Rule(("_momentums", "_velocities"), step, counts=True)


def _by_weight(step: Callable) -> Callable:
    """`step` one weight at a time, as Keras applies it to scalar variables: TensorFlow
    rewrites x / sqrt(y) as x * rsqrt(y), and rsqrt over a row differs in the last bit from
    rsqrt on a scalar."""

    def each(w, g, lr, t, s):
        ws, gs = tf.unstack(w), tf.unstack(g)
        slots = [tf.unstack(x) for x in s]
        new_w, new_s = [], [[] for _ in s]
        for i in range(len(ws)):
            wi, si = step(ws[i], gs[i], lr, t, [x[i] for x in slots])
            new_w.append(wi)
            for kept, value in zip(new_s, si, strict=True):
                kept.append(value)
        return tf.stack(new_w), [tf.stack(kept) for kept in new_s]

    return each


def _rmsprop(opt: Any) -> Rule:
    rho, eps = opt.rho, opt.epsilon

    def step(w, g, lr, t, s):
        velocity = rho * s[0] + (1 - rho) * tf.square(g)
        return w - (lr * g) / tf.sqrt(velocity + eps), [velocity]

    return Rule(("_velocities",), _by_weight(step))


def _adagrad(opt: Any) -> Rule:
    eps = opt.epsilon

    def step(w, g, lr, t, s):
        acc = s[0] + tf.square(g)
        return w - (lr * g) / tf.sqrt(acc + eps), [acc]

    return Rule(("_accumulators",), _by_weight(step))


# The optimizers written out here, with the settings under which they are as written.
OPTIMIZERS: dict[type, tuple[Callable[[Any], Rule], Callable[[Any], bool]]] = {
    keras.optimizers.SGD: (_sgd, lambda o: not o.nesterov),
    keras.optimizers.Adam: (_adam, lambda o: not o.amsgrad),
    keras.optimizers.RMSprop: (_rmsprop, lambda o: o.momentum == 0 and not o.centered),
    keras.optimizers.Adagrad: (_adagrad, lambda o: True),
}


def rule_for(opt: Any) -> Rule | None:
    """The written-out update of `opt`, or None when it has none here (another optimizer,
    or settings it does not cover: weight decay, clipping, EMA, a schedule...)."""
    entry = OPTIMIZERS.get(type(opt))
    plain = (
        not getattr(opt, "weight_decay", None)
        and getattr(opt, "clipnorm", None) is None
        and getattr(opt, "clipvalue", None) is None
        and getattr(opt, "global_clipnorm", None) is None
        and not getattr(opt, "use_ema", False)
        and getattr(opt, "gradient_accumulation_steps", None) is None
        and isinstance(getattr(opt, "_learning_rate", None), keras.Variable)
    )
    if entry is None or not plain or not entry[1](opt):
        return None
    return entry[0](opt)


# -- the fused call ------------------------------------------------------------------------


@dataclass(frozen=True)
class Copy:
    """One copy as a fused call sees it, taken at the call (a trainer may have been given
    another optimizer, or made a new loop, since the last one)."""

    loop: CompiledLoop  # its own compiled loop: snapshot, row layout, decoding
    variables: list  # its trained variables, in the trainer's order
    optimizer: Any
    rule: Rule


def why_not(trainers: Sequence[Any], forward: Callable | None) -> str | None:
    """Why these trainers' copies cannot run in one call, each bit for bit as a single
    trainer would; None when they can. `forward`: (weight values, x) -> predictions."""
    first = trainers[0]
    if first._style.kind != "params" or forward is None:
        return "a Keras model (its layers are not vectorised over copies here)"
    if any(unwrap(v).shape.rank != 0 for v in first._style.trainable):
        return "weights that are not scalars (a matmul batched over copies sums in another order)"
    for t in trainers:
        why = _why_not_loop(t._loop())
        if why is not None:
            return why
        if len(t._loop().record_vars) != len(t._style.trainable):
            return "more than 20 weights (the rows do not hold them)"
        if any(unwrap(v).dtype != tf.float32 for v in t._style.trainable):
            return "weights that are not float32"
        if rule_for(t._parts.optimizer) is None:
            return f"an optimizer without a written-out update ({t._parts.optimizer.name})"
    return _why_not_ops(first, forward)


def _why_not_ops(trainer: Any, forward: Callable) -> str | None:
    """The forward pass and loss traced once: only `EXACT_OPS`, no sum over more than
    `MAX_SUMMED` numbers."""
    data, loss = trainer._loop().data, trainer._parts.loss
    specs = [tf.TensorSpec(v.shape, tf.float32) for v in trainer._style.trainable]
    fn = tf.function(lambda values: scalar_loss(loss(data.y, forward(values, data.x))))
    try:
        graph = fn.get_concrete_function(specs).graph
    except Exception as err:  # the copies' own loops will say what is wrong
        return f"a forward pass that could not be traced ({type(err).__name__})"
    ops = graph.get_operations()
    kinds = {op.type for op in ops}
    for f in graph.as_graph_def().library.function:
        kinds |= {n.op for n in f.node_def}
    odd = sorted(kinds - EXACT_OPS)
    if odd:
        return f"ops that are not computed alike whatever the layout ({', '.join(odd[:4])})"
    sizes = [t.shape.num_elements() for op in ops for t in op.outputs]
    if any(n is None for n in sizes) or max(sizes, default=0) > MAX_SUMMED:
        return f"more than {MAX_SUMMED:,} numbers in one array (sums taken in blocks)"
    return None


def _why_not_loop(loop: Any) -> str | None:
    if not isinstance(loop, CompiledLoop) or not isinstance(loop.data, ArrayData):
        return "data that is not in memory"
    if "CPU" not in loop.device.upper():  # its sums' order is checked on the CPU only
        return f"training on {loop.device} (one call is checked bit for bit on the CPU only)"
    if not loop.fast:
        return "mini-batches (a call's epochs hold several steps)"
    if loop.val is not None or loop.metric_names or loop.health is not None:
        return "validation data, metrics or gradient health in the rows"
    return None


def copy_of(trainer: Any, loop: CompiledLoop) -> Copy | None:
    """The copy as a fused call would run it now, or None if it cannot (its optimizer or
    its loop changed to one this module does not write out)."""
    opt = trainer._parts.optimizer
    rule = rule_for(opt)
    if rule is None or _why_not_loop(loop) is not None:
        return None
    variables = list(trainer._style.trainable)
    if not opt.built:
        opt.build(variables)
    return Copy(loop, variables, opt, rule)


class Fused:
    """The compiled calls that run groups of copies together (one per group). The copies'
    weights are scalars (`why_not`): a copy's weights are a row, each weight a column."""

    def __init__(self, forward: Callable, loss: Callable):
        self.forward = forward  # (weight values, x) -> predictions, plain weight reads
        self.loss = loss
        self._fns: dict[tuple, Any] = {}

    def __call__(self, copies: Sequence[Copy], n_epochs: int) -> list[CallResult]:
        """Run `copies` `n_epochs` epochs; each copy's result, decoded by its own loop as
        its own call's would be."""
        key = tuple((id(c.loop), id(c.optimizer)) for c in copies)
        if key not in self._fns:
            group = list(copies)
            while len(self._fns) >= MAX_GROUPS:  # groups seen long ago: their loops go too
                del self._fns[next(iter(self._fns))]
            self._fns[key] = tf.function(lambda x, y, n: self._run(group, x, y, n))
        fn, data = self._fns[key], copies[0].loop.data
        traces = fn.experimental_get_tracing_count()
        start = time.perf_counter()
        with tf.device(copies[0].loop.device):
            rows = fn(data.x, data.y, tf.constant(n_epochs, tf.int32)).numpy()
        seconds = time.perf_counter() - start
        traced = fn.experimental_get_tracing_count() != traces
        out = []
        for i, c in enumerate(copies):
            res = c.loop._decode({"rows": rows[:, i, :]})
            res.seconds, res.traced = seconds, traced
            out.append(res)
        return out

    def _run(self, copies: list[Copy], x, y, n_epochs):
        for c in copies:  # as each copy's own call does: its rollback point
            for s, v in zip(c.loop.snapshot, c.loop.state, strict=True):
                s.assign(v)
        weights = tf.stack([_read(c.variables) for c in copies])
        slots = [[_read(_slot_vars(c, name)) for name in c.rule.slots] for c in copies]
        steps = [tf.cast(unwrap(c.optimizer.iterations).read_value(), tf.int64) for c in copies]
        rates = [tf.cast(unwrap(c.optimizer._learning_rate).read_value(), tf.float32)
                 for c in copies]  # fmt: skip
        table = tf.TensorArray(tf.float32, size=n_epochs)

        def per_copy_loss(values):
            return tf.cast(scalar_loss(self.loss(y, self.forward(values, x))), tf.float32)

        def body(e, weights, slots, table):
            with tf.GradientTape() as tape:
                tape.watch(weights)
                losses = tf.vectorized_map(per_copy_loss, tf.unstack(weights, axis=1))
            grads = tape.gradient(losses, weights)  # scalar weights: the rows' summaries
            new_w, new_slots = [], []
            rows, grad_rows = tf.unstack(weights), tf.unstack(grads)  # one op each, not K
            for i, c in enumerate(copies):
                t = None
                if c.rule.counts:
                    t = tf.cast(steps[i] + tf.cast(e, tf.int64) + 1, tf.float32)
                w, s = c.rule.step(rows[i], grad_rows[i], rates[i], t, slots[i])
                new_w.append(w)
                new_slots.append(s)
            new_weights = tf.stack(new_w)
            row = tf.concat([losses[:, None], grads, new_weights], axis=1)
            return e + 1, new_weights, new_slots, table.write(e, row)

        _, weights, slots, table = tf.while_loop(
            lambda e, *_: e < n_epochs, body, (tf.constant(0), weights, slots, table)
        )
        for i, c in enumerate(copies):  # the copies' own variables, as their steps leave them
            _write(c.variables, weights[i])
            for name, values in zip(c.rule.slots, slots[i], strict=True):
                _write(_slot_vars(c, name), values)
            unwrap(c.optimizer.iterations).assign_add(tf.cast(n_epochs, tf.int64))
        return table.stack()


def _slot_vars(c: Copy, name: str) -> list:
    """The optimizer's slot variables `name` for the copy's variables, in their order."""
    kept = getattr(c.optimizer, name)
    return [kept[c.optimizer._get_variable_index(v)] for v in c.variables]


def _read(variables: Sequence[Any]) -> tf.Tensor:
    """Scalar variables as one row."""
    return tf.stack([unwrap(v).read_value() for v in variables])


def _write(variables: Sequence[Any], row: tf.Tensor) -> None:
    for v, value in zip(variables, tf.unstack(row), strict=True):
        unwrap(v).assign(value)


# -- copies' calls meet at a table -----------------------------------------------------------


class Seat:
    """Stands in for a copy's compiled loop: its calls go to the table; all else (the
    snapshot, steps per epoch...) is its own loop's."""

    def __init__(self, table: Table, index: int, loop: CompiledLoop):
        self.table, self.index, self.loop = table, index, loop
        self.alone = False  # after a fault: its own loop only, until the next run

    def __call__(self, epoch0: int, n_epochs: int, b0: int = 0, b1: int | None = None):
        res = None if self.alone else self.table.sit(self, n_epochs)
        if res is None:
            res = self.loop(epoch0, n_epochs, b0, b1)
        if not res.ok and not self.alone:  # its trainer replays up to the fault, on its own
            self.go_alone()
        return res

    def go_alone(self) -> None:
        self.alone = True
        self.table.leave(self.index)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loop, name)


class Table:
    """Where the copies' calls meet: `sit` returns a fused call's result for the copy, or
    None when it is to run its own loop."""

    def __init__(self, trainers: Sequence[Any], fused: Fused):
        self.trainers = list(trainers)
        self.fused = fused
        self.broken: str | None = None  # why the fused call is no longer tried
        self._cv = threading.Condition()
        self._run = 0  # which run of the copies: a late leave() of an older one is ignored
        self._present: set[int] = set()  # copies whose run goes on at the table
        self._waiting: dict[int, tuple[Seat, int]] = {}  # copy -> its seat, epochs asked
        self._results: dict[int, Any] = {}  # copy -> CallResult, None (alone) or an error
        self._busy = False

    def seat(self, index: int) -> Callable[[CompiledLoop], Seat]:
        """What copy `index`'s trainer wraps each of its compiled loops in."""
        return lambda loop: Seat(self, index, loop)

    def open(self) -> int:
        """A run of every copy begins: all of them at the table. Returns the run's number,
        for `leave`."""
        with self._cv:
            self._run += 1
            self._present = set(range(len(self.trainers))) if self.broken is None else set()
            self._waiting.clear()
            self._results.clear()
            run = self._run
        for t in self.trainers:
            engine = t._loop()
            if isinstance(engine, Seat):
                engine.alone = self.broken is not None
        return run

    def leave(self, index: int, run: int | None = None) -> None:
        """Copy `index`'s run ended (or it goes on alone): nobody waits for it. `run`: the
        run it ended, when it may be an older one than the table's."""
        with self._cv:
            if run is None or run == self._run:
                self._present.discard(index)
                self._cv.notify_all()

    def sit(self, seat: Seat, n_epochs: int) -> CallResult | None:
        k = seat.index
        with self._cv:
            self._waiting[k] = (seat, n_epochs)
            self._cv.notify_all()
            try:
                while k not in self._results:
                    if not self._busy and self._all_here():
                        self._serve()
                    else:
                        self._cv.wait(WAIT_S)
            except BaseException:  # an interrupt while seated: not left waiting there
                self._waiting.pop(k, None)
                self._present.discard(k)
                self._cv.notify_all()
                raise
            out = self._results.pop(k)
        if isinstance(out, BaseException):
            raise out
        return out

    def _all_here(self) -> bool:
        """Every copy still at the table has sat down, or is paused (it would hold them)."""
        return all(k in self._waiting or self.trainers[k].paused for k in self._present)

    def _serve(self) -> None:
        """Group the waiting calls by epochs asked; run each group of two or more fused
        (outside the lock), send the others to their own loops. Called holding the lock.
        Every waiting copy gets an answer, whatever fails."""
        waiting, self._waiting = self._waiting, {}
        self._busy = True
        self._cv.release()
        results: dict[int, Any] = {}
        gone: list[int] = []
        try:
            groups: dict[int, list[tuple[int, Copy]]] = {}
            for k, (seat, n) in sorted(waiting.items()):
                copy = copy_of(self.trainers[k], seat.loop)
                if copy is None:  # changed since: on its own from now on
                    results[k] = None
                    seat.alone = True
                    gone.append(k)
                else:
                    groups.setdefault(n, []).append((k, copy))
            for n, group in groups.items():
                if len(group) > 1:
                    ks, copies = zip(*group, strict=True)
                    results.update(zip(ks, self.fused(list(copies), n), strict=True))
        except Exception as err:
            # The fused call failed before it wrote anything (its write-back comes last):
            # every copy runs its own loop from where it stands, which either gives the
            # same numbers or raises the copy's own error; no fused call is tried again.
            self.broken = f"the fused call failed: {_one_line(err)}"
            for seat, _ in waiting.values():
                seat.alone = True
            gone.extend(waiting)
            results = {}
        finally:
            self._cv.acquire()
            self._busy = False
            self._present.difference_update(gone)
            for k in waiting:
                self._results.setdefault(k, results.get(k))
            self._cv.notify_all()


def _one_line(err: BaseException) -> str:
    """The error as 'Type: message', its last line (TensorFlow puts the traced frames before
    the message of an error raised while tracing)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    name = type(err).__name__
    return last if last.startswith(f"{name}:") else f"{name}: {last}".rstrip(": ")
