"""Gradient health: per-layer statistics recorded in the compiled loop, findings in words.

What the loop records per epoch, per trainable variable (`HealthPlan`, graph side):
- the gradient norm: the root mean square over the epoch's steps of each step's norm
  (exact for one step an epoch; it reuses the squared norms the step already computes:
  one add a step);
- the weight norm at the epoch's end and the epoch's weight change, read once an epoch;
  the update ratio is that change per step over the weight norm (for one step an epoch
  it is exactly the step's; for many, the net change per step, a lower bound). Models
  small enough to have their parameters in the history get both from those, at no cost;
- for ReLU layers of a Keras functional or Sequential model, the fraction of units never
  active (output > 0) in any step of the epoch: the step runs a sub-model that shares the
  layers and also returns their outputs; two ops a layer a step keep a running max.
Under a tf.distribute strategy the norms are recorded and the ReLU statistic is off.

`GradientTable` (`history.gradients`) holds them by epoch; `Watch` turns them into
`Finding`s by the `HealthThresholds`. `health_first_step` explains, before training, each
variable that gets no gradient, with the cause's stable name in docs/diagnosis.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf

from tapemagic.training.health_table import GradientTable
from tapemagic.variables import unwrap

__all__ = ["Finding", "GradientTable", "HealthPlan", "HealthThresholds"]

RELU_NAMES = ("relu", "relu6")  # activations whose units die (no gradient below zero)


@dataclass(frozen=True)
class HealthThresholds:
    """When a statistic becomes a finding. Pass one as `Trainer(health=HealthThresholds(...))`.

    vanishing_ratio: a layer's gradient norm below this fraction of the median of the other
        layers' (needs three layers or more) for `epochs` epochs in a row.
    exploding_growth: a layer's gradient norm this many times its smallest over the last
        `exploding_window` epochs, and above its first epoch's.
    update_high: update ratio (update per step over weight norm, usually about 1e-3) above
        this for `epochs` epochs in a row (for a layer whose weights all start at zero, after
        its first `warmup` epochs: such weights change by large fractions of themselves at
        first).
    update_low: update ratio below this in each of the first `epochs` epochs: it barely learns.
    dead_fraction: at least this fraction of a ReLU layer's units never active in an epoch,
        for `epochs` epochs in a row.
    frozen: report layers frozen (trainable=False) on the loss's path.
    """

    vanishing_ratio: float = 1e-3
    exploding_growth: float = 1e3
    exploding_window: int = 10
    update_high: float = 0.1
    update_low: float = 1e-7
    warmup: int = 10
    dead_fraction: float = 0.6
    epochs: int = 3
    frozen: bool = True

    def __post_init__(self) -> None:
        for name in ("vanishing_ratio", "exploding_growth", "update_high", "update_low"):
            if not getattr(self, name) > 0:
                raise ValueError(f"HealthThresholds.{name} must be positive")
        if not self.update_low < self.update_high:
            raise ValueError(
                f"HealthThresholds.update_low ({self.update_low}) must be below update_high "
                f"({self.update_high})"
            )
        if not 0 < self.dead_fraction <= 1:
            raise ValueError("HealthThresholds.dead_fraction must be in (0, 1], e.g. 0.6")
        for name, least in (("exploding_window", 1), ("epochs", 1), ("warmup", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
                raise ValueError(
                    f"HealthThresholds.{name} must be a whole number of epochs >= {least}, "
                    f"not {value!r}"
                )


@dataclass(frozen=True)
class Finding:
    """One problem, in words: `kind`, where (`layer`, a layer or variable), when (`epoch`),
    and `text`, which ends with a concrete fix. For 'no-gradient', `cause` is the stable
    name of the cause in docs/diagnosis.md."""

    kind: str  # no-gradient, vanishing, exploding, update-too-large, update-too-small, dead-relu
    layer: str
    epoch: int
    text: str
    cause: str | None = None

    def __str__(self) -> str:
        return self.text


class Tap(NamedTuple):
    """A ReLU layer whose outputs the step returns."""

    name: str
    units: int


class LayerGroups(NamedTuple):
    """Layer names in order of first appearance, and each variable's index among them."""

    layers: list[str]
    index: list[int]


class ReluTaps(NamedTuple):
    """The ReLU layers a step watches, and the forward pass that also returns their
    outputs: `forward(x, training)` -> (predictions, [outputs]); None when there are none."""

    taps: list[Tap]
    forward: Callable[[Any, bool], tuple] | None


class HealthRows(NamedTuple):
    """Per touched epoch of one call (rows), as NumPy: what `HealthPlan.decode` reads."""

    grad_sq: np.ndarray  # (epochs, variables): sum over steps of squared gradient norms
    weight_sq: np.ndarray | None  # (epochs, variables): squared weight norms at the end
    delta_sq: np.ndarray | None  # (epochs, variables): squared weight change in the epoch
    act_max: np.ndarray | None  # (epochs, units): each unit's largest output


# -- grouping ----------------------------------------------------------------------------


def layer_groups(names: Sequence[str], model: Any = None) -> LayerGroups:
    """Each variable's layer. A Keras variable's layer is its path without the model's
    name and the last part ('sequential/dense_1/kernel' -> 'dense_1'); raw Variables are
    their own layers."""
    layers: list[str] = []
    index: list[int] = []
    prefix = f"{model.name}/" if model is not None else None
    for name in names:
        layer = name
        if model is not None and "/" in name:
            layer = name.rsplit("/", 1)[0]
            layer = layer[len(prefix) :] if layer.startswith(prefix) else layer
        if layer not in layers:
            layers.append(layer)
        index.append(layers.index(layer))
    return LayerGroups(layers, index)


def relu_taps(model: Any) -> ReluTaps:
    """The model's top-level ReLU layers and a forward pass through a sub-model that also
    returns their outputs; none when the model is not a functional graph (subclassed)."""
    import keras

    if model is None or not isinstance(model, keras.Model):
        return ReluTaps([], None)
    try:
        inputs, outputs = model.inputs, model.outputs
    except (AttributeError, ValueError):
        return ReluTaps([], None)
    if not inputs or not outputs or len(outputs) != 1:
        return ReluTaps([], None)
    taps, tensors = [], []
    for layer in model.layers:
        act = getattr(layer, "activation", None)
        relu = getattr(act, "__name__", "") in RELU_NAMES or (
            isinstance(layer, keras.layers.ReLU) and not float(layer.negative_slope)
        )
        if not relu:
            continue
        try:
            out = layer.output
        except (AttributeError, ValueError):  # a shared layer has several outputs
            continue
        taps.append(Tap(layer.name, int(out.shape[-1])))
        tensors.append(out)
    if not taps:
        return ReluTaps([], None)
    try:
        sub = keras.Model(inputs if len(inputs) > 1 else inputs[0], [outputs[0], *tensors])
    except Exception:  # a graph Keras cannot cut there: no ReLU statistic, the rest stands
        return ReluTaps([], None)

    def forward(x: Any, training: bool) -> tuple[Any, list]:
        pred, *acts = sub(x, training=training)
        return pred, acts

    return ReluTaps(taps, forward)


# -- graph side --------------------------------------------------------------------------


class HealthPlan:
    """What the compiled loop adds to each epoch's row, and how it reads it back.

    `weights`: 'graph' (norms and change computed in the loop), 'host' (from the recorded
    parameters of a small model) or 'off' (under a strategy)."""

    def __init__(
        self,
        variables: Sequence[Any],
        taps: Sequence[Tap] = (),
        tapped_forward: Callable | None = None,
        weights: str = "graph",
    ):
        self.variables = [unwrap(v) for v in variables]
        self.n = len(self.variables)
        self.taps = list(taps)
        self.units = sum(t.units for t in self.taps)
        self.tapped_forward = tapped_forward if self.taps else None
        self.weights = weights
        self.marks: list[tf.Variable] = []  # each epoch's starting weights (batched loops)

    def make_marks(self) -> None:
        """Copies of the weights where an epoch began (an epoch may span several calls, so
        its change is measured from these). Made outside the compiled loop."""
        if self.weights == "graph" and not self.marks:
            self.marks = [
                tf.Variable(v.read_value(), trainable=False, name="epoch_start")
                for v in self.variables
            ]

    def width(self, fast: bool) -> int:
        """Entries each row gets (a fast row already holds the gradient summaries)."""
        weights = 2 * self.n if self.weights == "graph" else 0
        return (0 if fast else self.n) + weights + self.units

    def read(self) -> list[tf.Tensor] | None:
        """The weights before a fast row's step, when the graph computes the change."""
        return [v.read_value() for v in self.variables] if self.weights == "graph" else None

    def mark(self, start: tf.Tensor) -> None:
        """At an epoch's start (batch `start` 0): remember the weights."""
        if not self.marks:
            return

        def assign() -> tf.Tensor:
            for m, v in zip(self.marks, self.variables, strict=True):
                m.assign(v.read_value())
            return tf.constant(True)

        tf.cond(start == 0, assign, lambda: tf.constant(False))

    def start(self) -> tuple:
        """An epoch's running sums: squared gradient norms, each unit's largest output."""
        acts = (tf.fill([self.units], -np.inf),) if self.units else ()
        return (tf.zeros([self.n]), *acts)

    def step(self, sums: tuple, sq: tf.Tensor, acts: Sequence[tf.Tensor] | None) -> tuple:
        """Sums after one more step with squared gradient norms `sq` and ReLU outputs."""
        if not self.units:
            return (sums[0] + sq,)
        return (sums[0] + sq, tf.maximum(sums[1], self.act_max(acts)))

    def act_max(self, acts: Sequence[tf.Tensor]) -> tf.Tensor:
        # each unit's (channel's) largest output: over the batch and any spatial axes
        peaks = [tf.cast(tf.reduce_max(a, axis=list(range(a.shape.rank - 1))), tf.float32)
                 for a in acts]  # fmt: skip
        return peaks[0] if len(peaks) == 1 else tf.concat(peaks, 0)

    def parts(self, w0: list | None, sums: tuple | None, acts: Any = None) -> list[tf.Tensor]:
        """The row's entries: squared gradient sums (batched rows; `sums` None in a fast
        row), the weights' squared norms and change since `w0` (or the epoch's start),
        the ReLU maxima."""
        out = [] if sums is None else [sums[0]]
        if self.weights == "graph":
            now = [v.read_value() for v in self.variables]
            before = w0 if w0 is not None else [m.read_value() for m in self.marks]
            out.append(tf.stack([_sq(w) for w in now]))
            out.append(tf.stack([_sq(w - w_0) for w, w_0 in zip(now, before, strict=True)]))
        if self.units:
            out.append(sums[1] if sums is not None else self.act_max(acts))
        return out

    def decode(self, block: np.ndarray, fast_sq: np.ndarray | None) -> HealthRows:
        """A call's rows (their health entries) as arrays; `fast_sq`: a fast row's
        squared gradient norms."""
        block = block.astype(np.float64)
        at = 0
        if fast_sq is None:
            grad_sq, at = block[:, : self.n], self.n
        else:
            grad_sq = fast_sq
        weight_sq = delta_sq = None
        if self.weights == "graph":
            weight_sq = block[:, at : at + self.n]
            delta_sq = block[:, at + self.n : at + 2 * self.n]
            at += 2 * self.n
        act = block[:, at : at + self.units] if self.units else None
        return HealthRows(grad_sq, weight_sq, delta_sq, act)


def _sq(t: tf.Tensor) -> tf.Tensor:
    return tf.cast(2.0 * tf.nn.l2_loss(tf.cast(t, tf.float32)), tf.float32)
