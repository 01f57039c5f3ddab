"""`GradientTable`: the gradient-health statistics of every epoch, per variable and per layer.

Stored as NumPy blocks appended a call at a time (a call may complete thousands of tiny
epochs); read with a lock, because a panel reads while a worker thread trains.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

STATS = ("grad_norm", "weight_norm", "update_norm", "update_ratio", "dead_fraction")
PER_VARIABLE = {"grad_norm": "_grad", "weight_norm": "_weight", "update_norm": "_update"}


class GradientTable:
    """Per epoch: each variable's gradient norm (RMS over the epoch's steps), weight norm
    (at its end) and update norm (weight change per step), and each ReLU layer's fraction
    of units never active. Layer statistics combine the layer's variables (norms add in
    squares); `update_ratio` is a layer's update norm over its weight norm.

    `table.layer_stat('grad_norm')` is an (epochs, layers) array in `table.layers` order;
    `table.to_pandas()` a long DataFrame (epoch, layer, stats...)."""

    def __init__(
        self,
        variables: Sequence[str],
        layers: Sequence[str],
        layer_of: Sequence[int],
        relu_layers: Sequence[str] = (),
        zero_start: Sequence[str] = (),
    ):
        self.variables = list(variables)
        self.layers = list(layers)
        self.layer_of = np.asarray(layer_of, dtype=np.int64)
        self.relu_layers = list(relu_layers)
        self.zero_start = list(zero_start)  # layers whose weights all started at 0
        self._lock = threading.Lock()
        n, t = len(self.variables), len(self.relu_layers)
        # grown by doubling: a call appends thousands of tiny epochs, often
        self._n = 0
        self._epochs = np.zeros(0, np.int64)
        # float32: a long run of tiny epochs keeps millions of rows
        self._grad, self._weight, self._update = (np.zeros((0, n), np.float32) for _ in range(3))
        self._dead = np.zeros((0, t), np.float32)

    # -- writing ---------------------------------------------------------------------

    def append(
        self,
        epochs: Sequence[int],
        grad: np.ndarray,
        weight: np.ndarray,
        update: np.ndarray,
        dead: np.ndarray | None = None,
    ) -> None:
        """Add epochs' rows: (epochs, variables) arrays, `dead` (epochs, ReLU layers)."""
        k = len(epochs)
        if not k:
            return
        dead = np.zeros((k, len(self.relu_layers))) if dead is None else dead
        with self._lock:
            n = self._n
            if n + k > len(self._epochs):
                size = max(2 * len(self._epochs), n + k, 64)
                for name in ("_epochs", "_grad", "_weight", "_update", "_dead"):
                    old = getattr(self, name)
                    new = np.zeros((size, *old.shape[1:]), old.dtype)
                    new[:n] = old[:n]
                    setattr(self, name, new)
            self._epochs[n : n + k] = np.asarray(epochs, np.int64)
            self._grad[n : n + k], self._weight[n : n + k] = grad, weight
            self._update[n : n + k], self._dead[n : n + k] = update, dead
            self._n = n + k

    def truncate(self, n_epochs: int) -> None:
        """Keep the epochs before `n_epochs` (the history was cut there)."""
        with self._lock:
            self._n = int(np.searchsorted(self._epochs[: self._n], n_epochs))

    # -- reading ---------------------------------------------------------------------

    def __len__(self) -> int:
        return self._n

    @property
    def epochs(self) -> np.ndarray:
        """The recorded epochs' numbers."""
        return self.epoch_numbers()

    def epoch_numbers(self, since: int = 0, until: int | None = None) -> np.ndarray:
        """Rows since..until's epoch numbers."""
        with self._lock:
            return self._epochs[: self._n][since:until].copy()

    def variable_stat(self, stat: str) -> np.ndarray:
        """(epochs, variables): 'grad_norm', 'weight_norm' or 'update_norm'."""
        if stat not in PER_VARIABLE:
            raise KeyError(
                f"no variable statistic {stat!r}; choose one of {', '.join(PER_VARIABLE)}"
            )
        with self._lock:
            return getattr(self, PER_VARIABLE[stat])[: self._n].astype(np.float64)

    def layer_stat(self, stat: str, since: int = 0, until: int | None = None) -> np.ndarray:
        """(epochs, layers) for rows since..until: 'grad_norm', 'weight_norm',
        'update_norm', 'update_ratio'; 'dead_fraction' is (epochs, ReLU layers)."""
        with self._lock:
            rows = slice(since, self._n if until is None else min(until, self._n))
            if stat == "dead_fraction":
                return self._dead[rows].astype(np.float64)
            if stat == "update_ratio":
                upd, wt = self._combine(self._update[rows]), self._combine(self._weight[rows])
                with np.errstate(divide="ignore", invalid="ignore"):
                    return np.where(wt > 0, upd / np.where(wt > 0, wt, 1.0), np.nan)
            if stat not in PER_VARIABLE:
                raise KeyError(f"no statistic {stat!r}; choose one of {', '.join(STATS)}")
            return self._combine(getattr(self, PER_VARIABLE[stat])[rows])

    def _combine(self, per_var: np.ndarray) -> np.ndarray:
        """Per-variable norms into per-layer ones: the root of the summed squares."""
        squares = per_var.astype(np.float64) ** 2
        out = np.empty((len(per_var), len(self.layers)))
        for j in range(len(self.layers)):  # a NaN stays in its own layer
            out[:, j] = squares[:, self.layer_of == j].sum(axis=1)
        return np.sqrt(out)

    def column(self, layer: str, stat: str = "grad_norm") -> list[float]:
        """One layer's (or ReLU layer's, for 'dead_fraction') statistic by epoch."""
        names = self.relu_layers if stat == "dead_fraction" else self.layers
        if layer not in names:
            raise KeyError(f"no layer {layer!r} for {stat}; layers are {', '.join(names)}")
        return self.layer_stat(stat)[:, names.index(layer)].tolist()

    def to_dict(self, by: str = "layer") -> dict[str, list]:
        """Long format: one entry per (epoch, layer), or per (epoch, variable) with
        `by='variable'`."""
        epochs = self.epochs
        if by == "variable":
            stats = {s: self.variable_stat(s) for s in PER_VARIABLE}
            names, layer_names = self.variables, [self.layers[i] for i in self.layer_of]
            out: dict[str, list] = {"epoch": np.repeat(epochs, len(names)).tolist()}
            out["variable"] = names * len(epochs)
            out["layer"] = layer_names * len(epochs)
        elif by == "layer":
            # a ReLU layer without weights (keras.layers.ReLU) gets rows of its own
            names = self.layers + [r for r in self.relu_layers if r not in self.layers]
            pad = np.full((len(epochs), len(names) - len(self.layers)), np.nan)
            stats = {s: np.hstack([self.layer_stat(s), pad]) for s in STATS[:4]}
            dead = self.layer_stat("dead_fraction")
            full = np.full((len(epochs), len(names)), np.nan)
            for j, name in enumerate(self.relu_layers):
                full[:, names.index(name)] = dead[:, j]
            stats["dead_fraction"] = full
            out = {"epoch": np.repeat(epochs, len(names)).tolist()}
            out["layer"] = names * len(epochs)
        else:
            raise ValueError(f"by must be 'layer' or 'variable', not {by!r}")
        for name, values in stats.items():
            out[name] = values.reshape(-1).tolist()
        return out

    def to_pandas(self, by: str = "layer") -> Any:
        """A long DataFrame (needs pandas); `.pivot(index='epoch', columns='layer',
        values='grad_norm')` gives one column per layer."""
        try:
            import pandas as pd
        except ImportError as err:
            raise ImportError(
                "GradientTable.to_pandas() needs pandas, which is not installed: "
                "`pip install pandas`, or use to_dict()"
            ) from err
        return pd.DataFrame(self.to_dict(by))

    # -- checkpoints -----------------------------------------------------------------

    def to_json(self) -> str:
        """Serialise with the history (NaN and Inf as strings, which JSON lacks)."""

        def enc(a: np.ndarray) -> list:
            return [[v if np.isfinite(v) else str(v) for v in row] for row in a.tolist()]

        with self._lock:
            n = self._n
            data = {
                "variables": self.variables, "layers": self.layers,
                "layer_of": self.layer_of.tolist(), "relu_layers": self.relu_layers,
                "zero_start": self.zero_start,
                "epochs": self._epochs[:n].tolist(), "grad": enc(self._grad[:n]),
                "weight": enc(self._weight[:n]), "update": enc(self._update[:n]),
                "dead": enc(self._dead[:n]),
            }  # fmt: skip
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> GradientTable:
        """Inverse of `to_json`."""
        data = json.loads(text)
        table = cls(
            data["variables"], data["layers"], data["layer_of"], data["relu_layers"],
            data.get("zero_start", ()),
        )  # fmt: skip

        def dec(rows: list, width: int) -> np.ndarray:
            values = [[float(v) for v in row] for row in rows]
            return np.asarray(values, np.float64).reshape(len(rows), width)

        n, t = len(table.variables), len(table.relu_layers)
        table.append(
            data["epochs"], dec(data["grad"], n), dec(data["weight"], n),
            dec(data["update"], n), dec(data["dead"], t),
        )  # fmt: skip
        return table

    def __repr__(self) -> str:
        n = len(self)
        if not n:
            return f"GradientTable(0 epochs, {len(self.layers)} layers)"
        last = self.layer_stat("grad_norm", since=n - 1)[0]
        worst = self.layers[int(np.nanargmin(last))] if np.isfinite(last).any() else "?"
        return (
            f"GradientTable({n} epochs, {len(self.layers)} layers; smallest gradient at the "
            f"last epoch: {worst})"
        )
