"""The training loss at other weights than the variables hold, for many weights at once.

`substituted_forward` traces a model's forward pass once and turns each read of a trained
variable into an input: importing that graph with other values in place of the reads gives
the predictions at those weights without reading or writing the variables. `SliceLoss`
builds on it the loss at w = center + x d1 + y d2 for a whole grid of (x, y) in one
compiled, vectorised call (`tf.vectorized_map` over chunks of points), on a fixed subset of
the training data, in inference mode. A Keras model's own losses (weight and activity
regularisers) are added as the trainer adds them: the path descends the regularised loss,
so its value, gradient and minimum are those of the loss the panel shows. The landscape
(`landscape.py`) and a comparison's copies (`compare.py`) use it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import keras
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import graph_pb2

from tapemagic.training.data import ArrayData
from tapemagic.training.objectives import scalar_loss
from tapemagic.variables import unwrap

MAX_SAMPLES = 512  # the fixed data subset the landscape is computed on
# layers whose training-mode output differs from inference (noise, batch statistics)
TRAINING_ONLY = (
    keras.layers.Dropout, keras.layers.GaussianDropout, keras.layers.GaussianNoise,
    keras.layers.AlphaDropout, keras.layers.BatchNormalization,
)  # fmt: skip
CHUNK_FLOATS = 2**25  # activations held at once by one chunk of grid points (128 MB)


class Local(NamedTuple):
    """The loss at one point of a plane, with its derivatives in the plane's coordinates."""

    loss: float
    gradient: np.ndarray  # (2,)
    hessian: np.ndarray  # (2, 2); NaN where an op has no second derivative


class Substituted(NamedTuple):
    """A forward pass as a function of (weight values, x), from `substituted_forward`."""

    call: Callable[[list, Any], Any]
    floats_per_sample: int  # held by its intermediate results (for sizing chunks)


class SliceLoss:
    """The training loss at weights w = center + x d1 + y d2, for many (x, y) at once.

    Built from a trainer's forward pass, loss and data; compiled on first use."""

    def __init__(self, trainer: Any, max_samples: int = MAX_SAMPLES, like: Any = None):
        style, parts = trainer._style, trainer._parts
        check_trainer(trainer)
        # `like`: another subject of the same shapes whose forward pass to use (the
        # original of a comparison's copies, which read their weights through a call)
        forward = like.forward if like is not None else style.forward
        self.variables = list(like.params if like is not None else style.trainable)
        self.names = list(style.names)
        self.device = trainer.device
        self.sizes = [int(np.prod(v.shape)) for v in self.variables]
        self.n = sum(self.sizes)
        dtypes = {tf.as_dtype(v.dtype) for v in self.variables}
        self.dtype = tf.float64 if tf.float64 in dtypes else tf.float32
        data = parts.data
        if isinstance(data, ArrayData):
            self.total = data.n
            self.samples = min(data.n, max_samples)
            sub = data.take(0, self.samples)
            x, y = sub.x, sub.y
        else:
            x, y = data.first()
            self.total = None
            self.samples = int(tf.shape(tf.nest.flatten(x)[0])[0])
        with tf.device(self.device):
            self.x, self.y = tf.nest.map_structure(tf.identity, (x, y))
        # the trainer adds a model's own losses to a model= subject's loss (not to a step's)
        model = style.model if like is None and style.kind == "model" else None

        def predict_and_extra(x: Any) -> tuple[Any, tf.Tensor]:
            pred = forward(x, False)
            extra = tf.add_n(model.losses) if model is not None and model.losses else 0.0
            return pred, tf.convert_to_tensor(extra)

        # dropout and batch norm act otherwise in training: the value is not the trainer's
        self.inference_differs = style.model is not None and any(
            isinstance(layer, TRAINING_ONLY) for layer in style.model._flatten_layers()
        )
        self._forward, per_sample = substituted_forward(
            predict_and_extra, self.variables, self.names, self.x
        )
        self._loss_fn = parts.loss
        per_point = self.samples * max(per_sample, 1) + 2 * self.n
        self.chunk = int(max(1, min(4096, CHUNK_FLOATS // per_point)))
        vec, dirs = tf.TensorSpec([self.n], self.dtype), tf.TensorSpec([2, self.n], self.dtype)
        # no autograph: these graphs have no Python control flow to convert
        self._grid = tf.function(
            self._grid_graph,
            input_signature=[vec, dirs, tf.TensorSpec([None, self.chunk, 2], self.dtype)],
            autograph=False,
        )
        self._local = tf.function(
            self._local_graph,
            input_signature=[vec, dirs, tf.TensorSpec([2], self.dtype)],
            autograph=False,
        )

    def _loss_at(self, w: tf.Tensor) -> tf.Tensor:
        values = [
            tf.cast(tf.reshape(part, v.shape), v.dtype)
            for part, v in zip(tf.split(w, self.sizes), self.variables, strict=True)
        ]
        pred, extra = self._forward(values, self.x)
        loss = scalar_loss(self._loss_fn(self.y, pred))
        return tf.cast(loss + tf.cast(extra, loss.dtype), self.dtype)

    def _grid_graph(self, center, dirs, coords):
        def one(c):
            return self._loss_at(center + c[0] * dirs[0] + c[1] * dirs[1])

        return tf.map_fn(
            lambda chunk: tf.vectorized_map(one, chunk), coords, fn_output_signature=self.dtype
        )

    def _local_graph(self, center, dirs, c):
        # Symbolic gradients: the imported ops are not recorded on a tape.
        loss = self._loss_at(center + c[0] * dirs[0] + c[1] * dirs[1])
        g = tf.gradients(loss, c)[0]
        try:
            h = tf.stack([tf.gradients(g[i], c)[0] for i in range(2)])
        except LookupError:  # an op without a second derivative: no Newton, no minimum
            h = tf.fill([2, 2], tf.constant(np.nan, self.dtype))
        return loss, g, h

    def _tensors(self, center: np.ndarray, dirs: np.ndarray) -> tuple[tf.Tensor, tf.Tensor]:
        return tf.constant(center, self.dtype), tf.constant(dirs, self.dtype)

    def grid(
        self,
        center: np.ndarray,
        dirs: np.ndarray,
        coords: np.ndarray,
        pause: Callable[[float], None] | None = None,
    ) -> np.ndarray:
        """Losses at `coords` (G, 2): one compiled call, or with `pause`, one call per
        chunk of points and `pause(seconds the chunk took)` after each (to yield the CPU)."""
        coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
        g = len(coords)
        chunk = self.chunk
        pad = -g % chunk
        padded = np.concatenate([coords, np.repeat(coords[-1:], pad, 0)]).reshape(-1, chunk, 2)
        c, d = self._tensors(center, dirs)
        out = []
        with tf.device(self.device):
            if pause is None:
                out.append(self._grid(c, d, tf.constant(padded, self.dtype)).numpy())
            else:
                for block in padded:
                    start = time.perf_counter()
                    out.append(self._grid(c, d, tf.constant(block[None], self.dtype)).numpy())
                    pause(time.perf_counter() - start)
        return np.concatenate([o.reshape(-1) for o in out])[:g].astype(np.float64)

    def local(self, center: np.ndarray, dirs: np.ndarray, at: np.ndarray) -> Local:
        """The loss, its gradient and Hessian at coordinates `at`."""
        c, d = self._tensors(center, dirs)
        with tf.device(self.device):
            loss, g, h = self._local(c, d, tf.constant(at, self.dtype))
        return Local(float(loss), g.numpy().astype(np.float64), h.numpy().astype(np.float64))


def check_trainer(trainer: Any) -> None:
    """A landscape needs predictions and a loss to evaluate at other weights."""
    if trainer._style.forward is None or trainer._parts.loss is None:
        raise ValueError(
            "the landscape needs the model's predictions and a loss: with step=, also "
            "pass model= (or params= with predict=) and loss="
        )


def substituted_forward(
    forward: Callable[[Any], Any], variables: Sequence[Any], names: Sequence[str], x: Any
) -> Substituted:
    """`forward` as a function of (weight values, x), and the floats per sample its
    intermediate results hold (for sizing chunks).

    The forward pass is traced once; in its graph each read of a trained variable becomes
    an input. Calling the result inside a `tf.function` imports that graph with the given
    values in place of the reads: the variables are never read or written."""
    concrete = tf.function(forward).get_concrete_function(x)
    graph = concrete.graph
    index = {id(unwrap(v).handle): i for i, v in enumerate(variables)}
    n_in = len(tf.nest.flatten(x))
    rename: dict[str, str] = {}
    feeds: dict[str, Any] = {}
    for j, t in enumerate(graph.inputs[:n_in]):
        rename[t.op.name] = f"__x{j}"
    dropped = set()
    for k, (outer, inner) in enumerate(graph.captures):
        i = index.get(id(outer))
        if i is None:  # a constant or an untrained variable (BatchNorm statistics): kept
            rename[inner.op.name] = f"__c{k}"
            feeds[f"__c{k}:0"] = outer
            continue
        dropped.add(inner.op.name)
        for op in inner.consumers():
            if op.type != "ReadVariableOp":
                raise ValueError(
                    f"the landscape cannot move {names[i]}: the model reads it with "
                    f"{op.type}, not a plain read (embedding lookups are not supported)"
                )
            rename[op.name] = f"__w{i}"
    source = graph.as_graph_def()
    graph_def = graph_pb2.GraphDef()
    graph_def.versions.CopyFrom(source.versions)
    graph_def.library.CopyFrom(source.library)

    def renamed(name: str) -> str | None:
        control = name.startswith("^")
        node, _, port = name.lstrip("^").partition(":")
        if node not in rename:
            return name
        return None if control else f"{rename[node]}:{port or 0}"

    for node in source.node:
        if node.name in rename or node.name in dropped:
            continue
        copy = graph_def.node.add()
        copy.CopyFrom(node)
        del copy.input[:]
        copy.input.extend(r for r in map(renamed, node.input) if r is not None)
    used = {i.lstrip("^").split(":")[0] for n in graph_def.node for i in n.input}
    outputs = [t.name for t in tf.nest.flatten(concrete.outputs)]
    structure = concrete.structured_outputs
    batch = tf.nest.flatten(x)[0].shape[0]
    per_sample = 0
    for op in graph.get_operations():
        for t in op.outputs:
            shape = t.shape
            if shape.rank and shape[0] == batch and shape.is_fully_defined():
                per_sample += int(np.prod(shape[1:]))

    def call(values: list, xs: Any) -> Any:
        g = tf.compat.v1.get_default_graph()

        def inside(t):  # a value from outside this graph (eager, or an outer function's)
            return t if tf.is_symbolic_tensor(t) and t.graph is g else g.capture(t)

        input_map = {name: inside(t) for name, t in feeds.items()}
        for i, v in enumerate(values):
            input_map[f"__w{i}:0"] = inside(tf.convert_to_tensor(v))
        for j, t in enumerate(tf.nest.flatten(xs)):
            input_map[f"__x{j}:0"] = inside(t)
        input_map = {k: v for k, v in input_map.items() if k.split(":")[0] in used}
        out = tf.graph_util.import_graph_def(
            graph_def, input_map=input_map, return_elements=outputs, name="landscape"
        )
        return tf.nest.pack_sequence_as(structure, out)

    return Substituted(call, per_sample)
