"""The weights a training run passed through, one flat vector per epoch, in bounded memory.

`Trainer.trajectory` records a point when training starts (or resumes) and after each
epoch: a small model's (up to `MAX_RECORDED_PARAMS` weights) from the per-epoch rows the
compiled loop writes anyway, a bigger model's written by the compiled loop after the
epochs on the stride (`CompiledLoop.record_path`), so a call that runs many tiny epochs
still gives one point per epoch kept; under a tf.distribute strategy, one point per call
that ends on an epoch boundary. Points are thinned as they come: only epochs on a stride
are kept, and the stride doubles whenever more than `capacity` points are kept, so a
100,000-epoch run keeps between capacity/2 and capacity points spread evenly over it; the
latest point is always kept. The landscape reads it: the path drawn, the PCA directions
(Li et al. 2018), the line from the first weights to the last (Goodfellow et al. 2015).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tapemagic.variables import unwrap

MAX_POINTS = 256  # points kept at most (between half and all of it once thinning starts)
MIN_POINTS = 8  # however big the model: enough for a path and its principal directions
MAX_BYTES = 32 * 2**20  # memory for the kept points of one trajectory
MAX_WEIGHTS = 2_000_000  # bigger models record only when asked (record_trajectory=True)


@dataclass(frozen=True)
class TrajectoryPoints:
    """A consistent copy of the kept points: `weights[i]` after `epochs[i]` epochs."""

    epochs: np.ndarray  # (P,) int: epochs done when the weights were read
    weights: np.ndarray  # (P, n) float32: the trainable weights, flattened and joined
    stride: int  # epochs between kept points (the latest point may fall between)

    def __len__(self) -> int:
        return len(self.epochs)

    @property
    def initial(self) -> np.ndarray:
        return self.weights[0]

    @property
    def current(self) -> np.ndarray:
        return self.weights[-1]


@dataclass(frozen=True)
class Principal:
    """The top principal directions of a trajectory (rows, unit length) and the share of
    the points' variance each explains."""

    directions: np.ndarray  # (k, n) float64
    explained: np.ndarray  # (k,)


def flat_weights(variables: Sequence[Any]) -> np.ndarray:
    """The variables' values flattened (C order) and joined, as float32."""
    parts = [np.ravel(unwrap(v).numpy()).astype(np.float32) for v in variables]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


class Trajectory:
    """Weights per epoch, thinned to at most `capacity` points; safe to read from another
    thread while the trainer records."""

    def __init__(self, n_weights: int, enabled: bool = True, capacity: int | None = None):
        self.n_weights = int(n_weights)
        self.enabled = bool(enabled)
        if capacity is None:
            by_memory = MAX_BYTES // max(4 * self.n_weights, 1)
            capacity = int(min(MAX_POINTS, max(MIN_POINTS, by_memory)))
        if capacity < 2:
            raise ValueError(f"capacity must be 2 or more points, not {capacity}")
        self.capacity = capacity
        self._lock = threading.Lock()
        self._epochs: list[int] = []
        self._weights: list[np.ndarray] = []
        self._tail: tuple[int, np.ndarray] | None = None  # the latest point, off the stride
        self._stride = 1

    @classmethod
    def for_variables(cls, variables: Sequence[Any], record: bool | None) -> Trajectory:
        """A trajectory for these variables: recording unless `record` is False, or None and
        the model has more than MAX_WEIGHTS weights."""
        n = sum(int(np.prod(v.shape)) for v in variables)
        return cls(n, enabled=record if record is not None else n <= MAX_WEIGHTS)

    # -- recording (the trainer's thread) --------------------------------------------

    def call_stride(self, n_epochs: int) -> int:
        """The stride for a compiled call of `n_epochs` that writes the points itself: this
        trajectory's, doubled until the call's points fit in MAX_BYTES."""
        with self._lock:
            stride = self._stride
        while (n_epochs // stride) * 4 * self.n_weights > MAX_BYTES:
            stride *= 2
        return stride

    def record(self, epochs: Sequence[int], weights: np.ndarray) -> None:
        """Points `weights[i]` (flat) after `epochs[i]` epochs, in increasing epoch order."""
        if not self.enabled:
            return
        weights = np.asarray(weights, dtype=np.float32).reshape(len(epochs), self.n_weights)
        with self._lock:
            for epoch, w in zip(epochs, weights, strict=True):
                self._add(int(epoch), w)

    def _add(self, epoch: int, w: np.ndarray) -> None:
        if self._epochs and epoch <= self._epochs[-1]:  # a rollback: drop what came after
            self._drop_after(epoch - 1)
        if epoch % self._stride and self._epochs:
            self._tail = (epoch, w.copy())
            return
        self._tail = None
        self._epochs.append(epoch)
        self._weights.append(w.copy())
        if len(self._epochs) > self.capacity:
            self._stride *= 2
            first = self._epochs[0]  # the starting point stays, whatever its epoch
            keep = [i for i, e in enumerate(self._epochs) if e == first or e % self._stride == 0]
            self._epochs = [self._epochs[i] for i in keep]
            self._weights = [self._weights[i] for i in keep]

    def truncate(self, epoch: int) -> None:
        """Forget the points after `epoch` epochs (a fault rolled training back)."""
        with self._lock:
            self._drop_after(epoch)

    def _drop_after(self, epoch: int) -> None:
        keep = sum(1 for e in self._epochs if e <= epoch)
        del self._epochs[keep:], self._weights[keep:]
        if self._tail is not None and self._tail[0] > epoch:
            self._tail = None

    def clear(self) -> None:
        """Forget every point (a reset); the next point recorded starts the path."""
        with self._lock:
            self._epochs, self._weights, self._tail, self._stride = [], [], None, 1

    # -- reading (any thread) --------------------------------------------------------

    def points(self) -> TrajectoryPoints:
        """The kept points and the latest one, copied under the lock."""
        with self._lock:
            epochs = list(self._epochs)
            weights = list(self._weights)
            if self._tail is not None:
                epochs.append(self._tail[0])
                weights.append(self._tail[1])
            stride = self._stride
        w = np.stack(weights) if weights else np.zeros((0, self.n_weights), np.float32)
        return TrajectoryPoints(np.asarray(epochs, dtype=np.int64), w, stride)

    def __len__(self) -> int:
        with self._lock:
            return len(self._epochs) + (self._tail is not None)

    def __repr__(self) -> str:
        state = "" if self.enabled else ", not recording"
        return (
            f"Trajectory({len(self)} points of {self.n_weights} weights, every "
            f"{self._stride} epochs{state})"
        )


def principal_directions(weights: np.ndarray, k: int = 2) -> Principal:
    """PCA of the rows of `weights`: the top `k` right singular vectors of the centred
    rows, signs fixed so each points from the first point towards the last; a run that
    moved along fewer than `k` directions gets orthogonal unit vectors for the rest."""
    if len(weights) < 2:
        raise ValueError(
            f"PCA directions need at least 2 points of the trajectory, it has "
            f"{len(weights)}: train a few epochs first, or use random directions"
        )
    centred = weights - weights.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    var = s**2
    total = var.sum()
    if total == 0:
        raise ValueError(
            "the trajectory has not moved yet: PCA has no direction; train a few epochs "
            "first, or use random directions"
        )
    dirs = np.zeros((k, weights.shape[1]))
    explained = np.zeros(k)
    rng = np.random.default_rng(0)
    for i in range(k):
        if i < len(s) and var[i] > 1e-12 * total:
            dirs[i], explained[i] = vt[i], var[i] / total
            continue
        # The run moved along fewer than k directions: any unit vector orthogonal to the
        # others completes the basis (the path lies on the first axes, as it should).
        d = rng.standard_normal(weights.shape[1])
        d -= dirs[:i].T @ (dirs[:i] @ d)
        dirs[i] = d / np.linalg.norm(d)
    travel = weights[-1] - weights[0]
    for i in range(k):
        if dirs[i] @ travel < 0:
            dirs[i] = -dirs[i]
    return Principal(dirs, explained)
