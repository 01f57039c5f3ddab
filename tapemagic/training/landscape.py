"""The loss landscape around a training run: a grid of losses, the path, the minimum.

Two scalar parameters (the seed's a and b) are drawn in their own coordinates. Any other
model is drawn on a 2-D slice through its current weights, w = w_now + x d1 + y d2, along
filter-normalised random directions (Li et al. 2018) or the top two principal directions
of its trajectory; `line` gives the loss on the straight line from the first weights to
the current ones (Goodfellow et al. 2015).

Every grid point is a forward pass at other weights than the variables hold. The model's
forward pass is traced once and its weight reads replaced by inputs (`SliceLoss`), so the
whole grid is one compiled, vectorised call (`tf.vectorized_map` over chunks of points)
that never touches the variables: training can go on in another thread meanwhile. The
loss is taken on a fixed subset of the training data (the first `max_samples` samples;
all of them for small data), in inference mode, with a Keras model's regularisation
losses as the trainer adds them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf

from tapemagic.training.slice_loss import MAX_SAMPLES, SliceLoss, check_trainer
from tapemagic.training.subject import scalar_names
from tapemagic.training.trajectory import TrajectoryPoints, flat_weights, principal_directions

KINDS = ("auto", "parameters", "random", "pca")


@dataclass(frozen=True)
class Landscape:
    """The loss on a grid, with the training path projected onto it.

    `values[i, j]` is the loss at (x[j], y[i]), i.e. at weights `center + x[j] *
    directions[0] + y[i] * directions[1]`. For two scalar parameters `center` is 0 and
    `directions` the identity, so x and y are the parameters' own values."""

    kind: str  # "parameters", "random", "pca" or "given"
    axis_names: tuple[str, str]
    x: np.ndarray  # (nx,) coordinates along the first direction
    y: np.ndarray  # (ny,) along the second
    values: np.ndarray  # (ny, nx) losses
    center: np.ndarray  # (n,) flat weights at coordinates (0, 0)
    directions: np.ndarray  # (2, n)
    path: np.ndarray  # (P, 2) the trajectory's points in these coordinates
    path_epochs: np.ndarray  # (P,) epochs done at each path point
    current: np.ndarray  # (2,) the latest point of the path
    current_loss: float  # the loss there
    gradient: np.ndarray  # (2,) the loss's gradient there, in these coordinates
    minimum: np.ndarray | None  # (2,) where Newton's method converged, if it did
    minimum_loss: float | None
    samples: int  # samples the loss is computed on
    total_samples: int | None  # training samples (None: a Dataset)
    note: str  # what a reader must know: the data subset, the directions' variance
    seconds: float  # time the grid took


@dataclass(frozen=True)
class Plane:
    """Where a grid lies: the weights `center + u * directions[0] + v * directions[1]`."""

    center: np.ndarray  # (n,) float64
    directions: np.ndarray  # (2, n) float64
    kind: str  # as `Landscape.kind`
    axis_names: tuple[str, str]
    note: str = ""  # what a reader must know about the directions
    about_center: bool = False  # a slice through the current weights: framed symmetrically


@dataclass(frozen=True)
class LineProfile:
    """The loss along w(t) = w_first + t (w_now - w_first): t=0 first, t=1 current."""

    t: np.ndarray
    values: np.ndarray
    path_t: np.ndarray  # the trajectory's points projected onto the line
    path_epochs: np.ndarray
    note: str


# -- directions -------------------------------------------------------------------------


def filter_normalized(
    noise: np.ndarray, variables: Sequence[Any], weights: np.ndarray
) -> np.ndarray:
    """`noise` (flat) scaled filter by filter to the norms of `weights` (Li et al. 2018):
    in a kernel each output unit (last axis) is a filter; biases and other vectors get 0
    when the model has kernels (as Li et al. do). A model without kernels (scalars such as
    a, b, c) has no filters: its direction is scaled to the weights' norm as a whole (a
    scalar scaled on its own would keep only its sign, and two directions would often be
    parallel)."""
    shapes = [tuple(int(d) for d in v.shape) for v in variables]
    has_kernels = any(len(sh) >= 2 for sh in shapes)
    if not has_kernels:
        scale = np.linalg.norm(weights.astype(np.float64))
        if scale == 0:  # all weights zero (a fresh zero-initialised model): plain noise
            scale = 1.0
        return noise / max(np.linalg.norm(noise), 1e-30) * scale
    out, start = [], 0
    for shape in shapes:
        size = int(np.prod(shape))
        d = noise[start : start + size].reshape(shape)
        w = weights[start : start + size].reshape(shape).astype(np.float64)
        start += size
        if len(shape) >= 2:
            axes = tuple(range(len(shape) - 1))
            dn = np.sqrt((d**2).sum(axis=axes, keepdims=True))
            wn = np.sqrt((w**2).sum(axis=axes, keepdims=True))
            d = d / np.maximum(dn, 1e-30) * wn
        else:
            d = np.zeros(shape)
        out.append(d.reshape(-1))
    flat = np.concatenate(out) if out else np.zeros(0)
    if not np.any(flat):  # all weights zero (a fresh zero-initialised model): plain noise
        flat = noise / max(np.linalg.norm(noise), 1e-30)
    return flat


def project(weights: np.ndarray, center: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """Least-squares coordinates (P, 2) of the rows of `weights` in the plane through
    `center` spanned by `dirs` (not necessarily orthogonal)."""
    gram = dirs @ dirs.T
    rel = weights.astype(np.float64) - center
    return np.linalg.solve(gram, dirs @ rel.T).T


# -- the grid's extent ------------------------------------------------------------------

MARGIN = 0.25  # room around the path, as a share of its extent
REFIT_BELOW = 0.2  # refit when the path fills less than this share of the frame


@dataclass(frozen=True)
class Frame:
    """The grid's extent: [lo[0], hi[0]] x [lo[1], hi[1]]."""

    lo: np.ndarray
    hi: np.ndarray

    def holds(self, points: np.ndarray) -> bool:
        """The points lie inside and fill a fair share of it (else the grid must move)."""
        if not len(points):
            return True
        lo, hi = points.min(axis=0), points.max(axis=0)
        inside = bool(np.all(lo >= self.lo) and np.all(hi <= self.hi))
        span = self.hi - self.lo
        return inside and bool(np.any(hi - lo >= REFIT_BELOW * span))


def pca_plane(weights: np.ndarray, center: np.ndarray, whose: str, about_center: bool) -> Plane:
    """The plane through `center` spanned by the top two principal directions of
    `weights` (points, one per row); its note says how much of `whose` variance they
    explain."""
    pc = principal_directions(weights.astype(np.float64))
    share = ", ".join(f"{100 * e:.1f}%" for e in pc.explained)
    note = f"PCA directions explain {share} of {whose} variance"
    return Plane(center, pc.directions, "pca", ("PC 1", "PC 2"), note, about_center)


def fit_frame(points: np.ndarray, floor: float) -> Frame:
    """A frame around the finite points, with a margin, each side at least 2 * floor."""
    pts = points[np.all(np.isfinite(points), axis=1)] if len(points) else points
    if not len(pts):
        pts = np.zeros((1, 2))
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    mid, half = (lo + hi) / 2, (hi - lo) / 2 * (1 + 2 * MARGIN)
    half = np.maximum(half, max(half.max() * 0.1, floor))
    return Frame(mid - half, mid + half)


class Minimum(NamedTuple):
    """Where Newton's method converged in a plane, and the loss there."""

    at: np.ndarray  # (2,) coordinates
    loss: float


def newton_minimum(
    loss: SliceLoss, center: np.ndarray, dirs: np.ndarray, start: np.ndarray, iters: int = 20
) -> Minimum | None:
    """Newton's method in the plane from `start`; the minimum where it converges with a
    positive definite Hessian and the loss falling at each step, else None (not convex
    enough there). A quadratic (the seed's sum of squares) converges in one step."""
    c = np.asarray(start, dtype=np.float64)
    value, g, h = loss.local(center, dirs, c)
    rounding = 1e-5 if loss.dtype == tf.float32 else 1e-12  # what float noise moves a loss by
    for _ in range(iters):
        if not (np.all(np.isfinite(h)) and np.all(np.linalg.eigvalsh((h + h.T) / 2) > 0)):
            return None
        step = -np.linalg.solve(h, g)
        if not np.all(np.isfinite(step)):
            return None
        if np.linalg.norm(step) <= 10 * rounding * (1.0 + np.linalg.norm(c)):
            return Minimum(c, value)  # stationary, with a positive definite Hessian
        new = loss.local(center, dirs, c + step)
        if not np.isfinite(new[0]) or new[0] > value + rounding * (abs(value) + 1e-30):
            return None
        c, (value, g, h) = c + step, new
    return None


# -- the landscape of a trainer ----------------------------------------------------------


class LandscapeMaker:
    """Landscapes of one trainer, kept warm: the compiled loss, the random directions and
    the grid's frame carry over from one `compute` to the next (a view calls it again and
    again; the grid moves only when the path leaves it).

    `directions`: "auto" (the parameters themselves for two scalars, else "random"),
    "parameters", "random" (filter-normalised), "pca" (of the trajectory), or an array
    (2, n_weights) of your own. `resolution`: grid points per side."""

    def __init__(
        self,
        trainer: Any,
        directions: Any = "auto",
        resolution: int = 61,
        max_samples: int = MAX_SAMPLES,
        seed: int = 0,
        loss: SliceLoss | None = None,
    ):
        """`loss`: the loss to draw, when not the trainer's own forward pass (compare's
        copies draw their original's)."""
        check_trainer(trainer)
        self.trainer = trainer
        self.resolution = _check_resolution(resolution)
        if int(max_samples) < 1:
            raise ValueError(f"max_samples must be 1 or more, not {max_samples}")
        self.max_samples = int(max_samples)
        self.seed = int(seed)
        self.n = sum(int(np.prod(v.shape)) for v in trainer.variables)
        names = trainer._style.names
        # two weights get an axis each: 'a' and 'b', or 'w[0]' and 'w[1]' inside a vector
        self.names = scalar_names(trainer.variables, names) if self.n <= 2 else list(names)
        self.directions = directions  # checked by the setter
        self.frame: Frame | None = None
        self._loss: SliceLoss | None = loss
        self._noise: np.ndarray | None = None
        self._minimum: Minimum | None = None  # kept for two parameters
        self._grid: tuple[tuple, np.ndarray] | None = None  # (frame key, values), likewise

    @property
    def directions(self) -> Any:
        return self._directions

    @directions.setter
    def directions(self, spec: Any) -> None:
        if isinstance(spec, str):
            if spec not in KINDS:
                raise ValueError(
                    f"directions must be one of {', '.join(KINDS)} or an array (2, n_weights), "
                    f"not {spec!r}"
                )
            if spec == "parameters" and self.n != 2:
                raise ValueError(
                    f"directions='parameters' needs exactly two scalar weights; this model "
                    f"has {self.n}: use 'random' or 'pca'"
                )
            self.kind = spec if spec != "auto" else ("parameters" if self.n == 2 else "random")
        else:
            arr = np.asarray(spec, dtype=np.float64)
            if arr.shape != (2, self.n) or not np.all(np.isfinite(arr)):
                raise ValueError(
                    f"directions as an array must have shape (2, {self.n}) (two flat weight "
                    f"vectors) and be finite, not shape {arr.shape}"
                )
            if abs(np.linalg.det(arr @ arr.T)) < 1e-12 * np.sum(arr**2) ** 2:
                raise ValueError("the two directions are parallel: give two independent ones")
            self.kind = "given"
        self._directions = spec
        self.frame = None
        self._minimum = self._grid = None

    def loss(self) -> SliceLoss:
        if self._loss is None:
            self._loss = SliceLoss(self.trainer, self.max_samples)
        return self._loss

    def _points(self) -> TrajectoryPoints:
        pts = self.trainer.trajectory.points()
        if not len(pts):  # not recording: the current weights alone
            now = flat_weights(self.trainer.variables)[None]
            pts = TrajectoryPoints(np.array([self.trainer.epoch]), now, 1)
        return pts

    def plane(self, pts: TrajectoryPoints) -> Plane:
        """The plane of this maker's directions for the trajectory `pts`."""
        current = pts.current.astype(np.float64)
        if self.kind == "parameters":
            return Plane(np.zeros(2), np.eye(2), "parameters", (self.names[0], self.names[1]))
        names = ("direction 1", "direction 2")
        if self.kind == "given":
            dirs = np.asarray(self._directions, dtype=np.float64)
            return Plane(current, dirs, "given", names, about_center=True)
        if self.kind == "pca":
            return pca_plane(pts.weights, current, "the path's", about_center=True)
        if self._noise is None:
            self._noise = np.random.default_rng(self.seed).standard_normal((2, self.n))
        dirs = np.stack(
            [filter_normalized(z, self.trainer.variables, current) for z in self._noise]
        )
        note = "filter-normalised random directions"
        return Plane(current, dirs, "random", names, note, about_center=True)

    def _data_note(self, loss: SliceLoss) -> str:
        notes = []
        if loss.total is None:
            notes.append(f"loss on the Dataset's first batch ({loss.samples} samples)")
        elif loss.samples < loss.total:
            notes.append(
                f"loss on a fixed subset: the first {loss.samples:,} of {loss.total:,} samples"
            )
        if loss.inference_differs:
            notes.append("in inference mode (no dropout, batch norm's moving statistics)")
        return "; ".join(notes)

    def compute(
        self,
        resolution: int | None = None,
        pause: Callable[[float], None] | None = None,
        find_minimum: bool = True,
    ) -> Landscape:
        """The grid around the trajectory, re-centred when the path has left the last one."""
        if self.n < 2:
            raise ValueError(
                f"a 2-D landscape needs two or more weights; this model has one "
                f"({self.names[0]}): its loss along that weight is line()"
            )
        pts = self._points()
        return self.on_plane(self.plane(pts), [pts], resolution, pause, find_minimum)

    def on_plane(
        self,
        plane: Plane,
        paths: Sequence[TrajectoryPoints],
        resolution: int | None = None,
        pause: Callable[[float], None] | None = None,
        find_minimum: bool = True,
    ) -> Landscape:
        """The grid on `plane`, framed to hold every path; the landscape's path, current
        point and gradient are those of the first."""
        res = _check_resolution(resolution or self.resolution)
        start = time.perf_counter()
        loss = self.loss()
        center, dirs = plane.center, plane.directions
        projected = [project(p.weights, center, dirs) for p in paths]
        path = projected[0]
        current = path[-1]
        here = loss.local(center, dirs, current)
        # Over two parameters the loss does not move as training does: its minimum and
        # the grid of a frame are kept (a view redraws the path without recomputing them).
        fixed = plane.kind == "parameters"
        minimum = None
        if find_minimum:
            minimum = self._minimum if fixed and self._minimum else None
            minimum = minimum or newton_minimum(loss, center, dirs, current)
            if fixed:
                self._minimum = minimum
        shown = np.concatenate(projected + ([minimum.at[None]] if minimum else []))
        shown = shown[np.all(np.isfinite(shown), axis=1)]
        if self.frame is None or not self.frame.holds(shown):
            extent = float(np.ptp(shown, axis=0).max()) if len(shown) else 0.0
            # filter-normalised directions have the weights' own scale: Li et al. look
            # at [-1, 1]; elsewhere the path's extent sets the scale (1 if it has none)
            floor = 1.0 if plane.kind == "random" or extent == 0 else min(1.0, extent)
            if plane.about_center:
                shown = np.concatenate([shown, -shown])
            self.frame = fit_frame(shown, floor)
        f = self.frame
        xs, ys = np.linspace(f.lo[0], f.hi[0], res), np.linspace(f.lo[1], f.hi[1], res)
        gx, gy = np.meshgrid(xs, ys)
        key = (f.lo.tobytes(), f.hi.tobytes(), res)
        if fixed and self._grid is not None and self._grid[0] == key:
            values = self._grid[1]
        else:
            values = loss.grid(center, dirs, np.stack([gx.ravel(), gy.ravel()], 1), pause)
            self._grid = (key, values) if fixed else None
        notes = [n for n in (self._data_note(loss), plane.note) if n]
        return Landscape(
            kind=plane.kind,
            axis_names=plane.axis_names,
            x=xs,
            y=ys,
            values=values.reshape(res, res).copy(),  # the kept grid stays as it was
            center=center,
            directions=dirs,
            path=path,
            path_epochs=paths[0].epochs,
            current=current,
            current_loss=here.loss,
            gradient=here.gradient,
            minimum=None if minimum is None else minimum.at,
            minimum_loss=None if minimum is None else minimum.loss,
            samples=loss.samples,
            total_samples=loss.total,
            note="; ".join(notes),
            seconds=time.perf_counter() - start,
        )

    def line(
        self, resolution: int = 41, pause: Callable[[float], None] | None = None
    ) -> LineProfile:
        """The loss on the line from the first weights of the trajectory (t=0) to the
        current ones (t=1), from t=-0.25 to t=1.25 (Goodfellow et al. 2015)."""
        res = _check_resolution(resolution)
        loss = self.loss()
        pts = self._points()
        w0 = pts.initial.astype(np.float64)
        d = pts.current.astype(np.float64) - w0
        if not np.any(d):
            raise ValueError("the weights have not moved yet: train some epochs first")
        t = np.linspace(-0.25, 1.25, res)
        dirs = np.stack([d, np.zeros_like(d)])
        values = loss.grid(w0, dirs, np.stack([t, np.zeros_like(t)], 1), pause)
        path_t = (pts.weights.astype(np.float64) - w0) @ d / (d @ d)
        return LineProfile(t, values, path_t, pts.epochs, self._data_note(loss))


def _check_resolution(resolution: Any) -> int:
    if isinstance(resolution, bool) or not isinstance(resolution, int | np.integer):
        raise ValueError(f"resolution must be a whole number of grid points, not {resolution!r}")
    if not 3 <= resolution <= 401:
        raise ValueError(f"resolution must be from 3 to 401 points per side, not {resolution}")
    return int(resolution)


def landscape(
    trainer: Any, directions: Any = "auto", resolution: int = 61, **kwargs: Any
) -> Landscape:
    """The loss landscape around `trainer`'s run (see `LandscapeMaker`), computed once."""
    return LandscapeMaker(trainer, directions, resolution, **kwargs).compute()
