"""Training data as the compiled loop wants it: in-memory tensors or a `tf.data.Dataset`.

Owns the Trainer's `data`, `validation_data`, `validation_split` and `batch_size` (the
compiled loop applies `shuffle` and `seed` to the batches it cuts from these arrays).

In-memory arrays are the fast path: the compiled loop slices batches itself, with no
input pipeline per step (tests/bench_trainer.py measures about 2x Keras `fit` on an
MLP). A Dataset is iterated as given, one step per element, whole epochs at a time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf


@dataclass
class ArrayData:
    """Inputs and targets held as tensors (possibly nested) with `n` samples."""

    x: Any
    y: Any
    n: int

    def take(self, start: int, stop: int) -> ArrayData:
        """Samples [start, stop), eagerly (for probes and splits)."""
        x, y = tf.nest.map_structure(lambda t: t[start:stop], (self.x, self.y))
        return ArrayData(x, y, stop - start)

    def to_device(self, device: str) -> ArrayData:
        """A copy living on `device`, so batches are sliced where the variables are."""
        with tf.device(device):
            x, y = tf.nest.map_structure(tf.identity, (self.x, self.y))
        return ArrayData(x, y, self.n)


@dataclass
class DatasetData:
    """A Dataset yielding (x, y) batches; `steps` is its length when TensorFlow knows it."""

    ds: tf.data.Dataset
    steps: int | None
    name: str = "data"  # the argument it came from, for messages

    def first(self) -> tuple[Any, Any]:
        """The first (x, y) element, for the construction-time probe; NaN or Inf in it is
        refused (later batches are not read before training: a Dataset may be a stream)."""
        for x, y in self.ds.take(1):
            for what, part in (("X", x), ("Y", y)):
                for t in tf.nest.flatten(part):
                    if t.dtype.is_floating and t.shape.rank:
                        _check_finite(t, what, f"{self.name} (its first batch)")
            return x, y
        raise ValueError(
            f"{self.name}: the Dataset is empty; it must yield at least one (x, y) batch"
        )


def _to_tensor(value: Any, dtype: tf.DType, what: str, name: str = "data") -> tf.Tensor:
    if isinstance(value, tf.data.Dataset):
        raise ValueError(f"data: {what} is a Dataset; pass the Dataset itself as data=")
    try:
        tensor = tf.convert_to_tensor(value)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"data: {what} ({type(value).__name__}) cannot become a tensor: pass a NumPy "
            "array, a list of numbers or a tf.Tensor"
        ) from err
    if tensor.dtype.is_floating and tensor.dtype != dtype:
        tensor = tf.cast(tensor, dtype)
    if tensor.shape.rank == 0:
        raise ValueError(
            f"data: {what} is a scalar; it needs one row per sample (a 1-D or N-D array)"
        )
    if tensor.dtype.is_floating:
        _check_finite(tensor, what, name)
    return tensor


def _check_finite(tensor: tf.Tensor, what: str, name: str) -> None:
    """NaN or Inf in the data makes every loss after it NaN: named here, before training,
    so that it is not taken for a learning rate that is too high."""
    values = tensor.numpy()
    nan, inf = np.isnan(values), np.isinf(values)
    if not (nan.any() or inf.any()):
        return
    counts = " and ".join(
        f"{int(m.sum())} {kind}" for m, kind in ((nan, "NaN"), (inf, "Inf")) if m.any()
    )
    rows = np.flatnonzero((nan | inf).reshape(len(values), -1).any(axis=1))
    shown = ", ".join(str(r) for r in rows[:3]) + (", ..." if len(rows) > 3 else "")
    keep = f"np.isfinite({what})" + (".all(axis=1)" if values.ndim == 2 else "")
    if values.ndim > 2:
        keep = f"np.isfinite({what}).reshape(len({what}), -1).all(axis=1)"
    raise ValueError(
        f"{name}: {what} has {counts} (in {len(rows)} of {len(values)} samples: "
        f"{'rows' if len(rows) > 1 else 'row'} {shown}); remove or fill them before "
        f"training, e.g. keep only the rows where {keep}"
    )


def prepare(data: Any, dtype: tf.DType, name: str = "data") -> ArrayData | DatasetData:
    """Check and convert `(X, Y)` or a Dataset; float arrays take the variables' dtype."""
    if data is None:
        raise ValueError(f"{name}: missing; pass {name}=(X, Y) or a tf.data.Dataset of (x, y)")
    if isinstance(data, tf.data.Dataset):
        spec = data.element_spec
        if not (isinstance(spec, tuple) and len(spec) == 2):
            raise ValueError(
                f"{name}: the Dataset must yield (x, y) pairs; map it, e.g. "
                "ds.map(lambda row: (row['x'], row['y']))"
            )
        _check_batched(spec, name)
        steps = int(data.cardinality())
        if steps == tf.data.INFINITE_CARDINALITY:
            raise ValueError(
                f"{name}: the Dataset repeats forever, so an epoch never ends; drop .repeat() "
                "or add .take(steps_per_epoch)"
            )
        return DatasetData(data, steps if steps >= 0 else None, name)
    _check_not_pairs(data, name)
    if not (isinstance(data, tuple | list) and len(data) == 2):
        raise ValueError(
            f"{name}: expected a pair (X, Y) or a tf.data.Dataset, got {type(data).__name__}"
            + (f" of length {len(data)}" if isinstance(data, tuple | list) else "")
        )
    x = tf.nest.map_structure(lambda v: _to_tensor(v, dtype, "X", name), _arrays(data[0]))
    y = tf.nest.map_structure(lambda v: _to_tensor(v, dtype, "Y", name), _arrays(data[1]))
    sizes = {int(t.shape[0]) for t in tf.nest.flatten((x, y))}
    if len(sizes) != 1:
        xs = [int(t.shape[0]) for t in tf.nest.flatten(x)]
        ys = [int(t.shape[0]) for t in tf.nest.flatten(y)]
        raise ValueError(
            f"{name}: X has {_plural(xs)} but Y has {_plural(ys)}; they need the same "
            "first dimension (one row per sample)"
        )
    n = sizes.pop()
    if n == 0:
        raise ValueError(f"{name}: X and Y are empty")
    return ArrayData(x, y, n)


def _check_batched(spec: tuple, name: str) -> None:
    """A Dataset of single samples, not batches: a scalar x or y, or x and y whose first
    dimensions are known and differ (in a batch both count the same samples)."""
    shapes = [s.shape for s in tf.nest.flatten(spec) if isinstance(s, tf.TensorSpec)]
    firsts = {s[0] for s in shapes if s.rank and s[0] is not None}
    if any(s.rank == 0 for s in shapes) or len(firsts) > 1:
        x, y = (tf.nest.map_structure(lambda t: _shape_text(t.shape), part) for part in spec)
        raise ValueError(
            f"{name}: the Dataset yields single samples (x with shape {x}, y with shape {y}), "
            "not batches; batch it: ds.batch(32)"
        )


def _shape_text(shape: tf.TensorShape) -> Any:
    return tuple(shape) if shape.rank is not None else "unknown"


def _check_not_pairs(data: Any, name: str) -> None:
    """`[(x1, y1), (x2, y2), ...]`, a list of (x, y) pairs, would otherwise be read as
    X=(x1, y1), Y=(x2, y2): refused, with what to pass instead."""
    if not (isinstance(data, list) and len(data) >= 2):
        return
    if all(isinstance(d, tuple) and len(d) == 2 for d in data):
        reading = (
            " is ambiguous (it would read as X=(x1, y1), Y=(x2, y2))" if len(data) == 2 else ""
        )
        raise ValueError(
            f"{name}: a list of {len(data)} (x, y) pairs{reading}; pass one tuple (X, Y) "
            "with the samples stacked, e.g. "
            "(np.stack([x for x, _ in pairs]), np.stack([y for _, y in pairs])), or a "
            "tf.data.Dataset"
        )


def _arrays(value: Any) -> Any:
    """Lists (and tuples) of numbers are arrays; a tuple or dict of arrays is a structure."""
    if isinstance(value, dict):
        return {k: _arrays(v) for k, v in value.items()}
    if isinstance(value, tuple) and value and not _is_numeric(value[0]):
        return tuple(_arrays(v) for v in value)
    if isinstance(value, list | tuple):
        try:
            return np.asarray(value)
        except ValueError as err:
            raise ValueError(
                "data: a list in X or Y is ragged; every row needs the same length"
            ) from err
    return value


def _is_numeric(value: Any) -> bool:
    return isinstance(value, int | float | np.number | list) or (
        isinstance(value, tuple) and bool(value) and _is_numeric(value[0])
    )


def _plural(sizes: list[int]) -> str:
    return f"{sizes[0]} samples" if len(set(sizes)) == 1 else f"samples {sizes}"


def split(data: ArrayData | DatasetData, fraction: float) -> tuple[ArrayData, ArrayData]:
    """Keras's `validation_split`: the last `fraction` of the samples, before shuffling."""
    if not isinstance(data, ArrayData):
        raise ValueError(
            "validation_split needs in-memory (X, Y); with a Dataset pass validation_data="
        )
    if isinstance(fraction, bool) or not isinstance(fraction, int | float | np.number):
        raise ValueError(
            f"validation_split must be a fraction such as 0.2, got {type(fraction).__name__} "
            f"{fraction!r}"
        )
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation_split must be between 0 and 1 (exclusive), got {fraction}")
    # Keras keeps the first floor(n * (1 - fraction)) samples to train on
    cut = int(math.floor(data.n * (1.0 - fraction)))
    if cut < 1 or cut >= data.n:
        raise ValueError(
            f"validation_split={fraction} of {data.n} samples leaves "
            f"{cut} to train on and {data.n - cut} to validate; choose another fraction"
        )
    return data.take(0, cut), data.take(cut, data.n)


def batch_count(n: int, batch_size: int | None) -> int:
    """Steps per epoch; the last batch may be smaller (as in Keras)."""
    return 1 if batch_size is None else -(-n // batch_size)


def check_batch_size(batch_size: Any, data: ArrayData | DatasetData) -> int | None:
    """A positive int, or None for the whole data in one step (the seed's full batch)."""
    if batch_size is None:
        return None
    if isinstance(data, DatasetData):
        raise ValueError(
            "batch_size applies to in-memory (X, Y); batch the Dataset itself with ds.batch(n)"
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer):
        raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    return min(int(batch_size), data.n)
