"""Per-epoch training records, stored by column.

The trainer can finish thousands of tiny epochs in one compiled call, so the history
appends whole columns at once instead of building one object per epoch; `EpochRecord`
objects are made only when someone asks for one. Reads and appends take a lock because
a panel reads while a worker thread trains.
"""

from __future__ import annotations

import csv
import json
import math
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tapemagic.training.health_table import GradientTable

# Columns every history has, in display order; metrics and parameters follow them.
BASE_COLUMNS = ("epoch", "loss", "val_loss", "learning_rate", "grad_norm", "seconds")


@dataclass
class EpochRecord:
    """What one epoch did: its mean loss (before each step's update) and its context."""

    epoch: int
    loss: float
    val_loss: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    learning_rate: float | None = None
    grad_norm: float | None = None
    seconds: float = 0.0
    params: dict[str, float] | None = None

    def logs(self) -> dict[str, float]:
        """The logs `fit` gives `on_epoch_end`: loss, metrics, then the validation ones
        (no learning rate: `fit` has none there; ReduceLROnPlateau adds its own)."""
        logs: dict[str, float] = {"loss": self.loss}
        logs.update({k: v for k, v in self.metrics.items() if not k.startswith("val_")})
        if self.val_loss is not None:
            logs["val_loss"] = self.val_loss
        logs.update({k: v for k, v in self.metrics.items() if k.startswith("val_")})
        return logs


@dataclass
class EpochColumns:
    """Several epochs' records as columns of equal length: what `History.extend` appends."""

    epochs: Sequence[int]
    loss: Sequence[float]
    val_loss: Sequence[float] | None = None
    grad_norm: Sequence[float] | None = None
    seconds: Sequence[float] | None = None
    metrics: dict[str, Sequence[float]] = field(default_factory=dict)
    params: dict[str, Sequence[float]] | None = None


def _num(value: Any) -> float | None:
    return None if value is None else float(value)


class History:
    """All epochs so far. `history["loss"]` is a column, `history[-1]` a record."""

    def __init__(self, metric_names: Sequence[str] = (), param_names: Sequence[str] = ()):
        self._lock = threading.Lock()
        self._cols: dict[str, list] = {name: [] for name in BASE_COLUMNS}
        self._metrics: dict[str, list] = {name: [] for name in metric_names}
        self._params: dict[str, list] = {name: [] for name in param_names}
        self._gradients: GradientTable | None = None

    @property
    def gradients(self) -> GradientTable | None:
        """Per-layer gradient health by epoch (`GradientTable`: `.to_pandas()`,
        `.column(layer)`); None when the trainer was made with health=False."""
        return self._gradients

    @gradients.setter
    def gradients(self, table: GradientTable | None) -> None:
        self._gradients = table

    # -- writing (the trainer) -------------------------------------------------------

    def extend(self, columns: EpochColumns, learning_rate: float | None = None) -> None:
        """Append several epochs at once, all trained at `learning_rate`."""
        c = columns
        n = len(c.epochs)
        none = [None] * n

        def floats(values):  # NumPy's tolist() is ~20x faster than a float() per item
            return none if values is None else np.asarray(values, dtype=np.float64).tolist()

        with self._lock:
            self._cols["epoch"].extend(np.asarray(c.epochs, dtype=np.int64).tolist())
            self._cols["loss"].extend(floats(c.loss))
            self._cols["val_loss"].extend(floats(c.val_loss))
            self._cols["learning_rate"].extend([_num(learning_rate)] * n)
            self._cols["grad_norm"].extend(floats(c.grad_norm))
            self._cols["seconds"].extend([0.0] * n if c.seconds is None else floats(c.seconds))
            for name, col in self._metrics.items():
                col.extend(floats(c.metrics.get(name)))
            for name, col in self._params.items():
                col.extend(floats((c.params or {}).get(name)))

    def truncate(self, n: int) -> None:
        """Keep the first `n` epochs (after a rollback)."""
        with self._lock:
            for col in self._all_columns().values():
                del col[n:]
        if self._gradients is not None:  # its epochs are numbered from 0, as the history's
            self._gradients.truncate(n)

    def clear(self) -> None:
        """Forget every epoch (after `Trainer.reset`)."""
        self.truncate(0)

    # -- reading ---------------------------------------------------------------------

    def _all_columns(self) -> dict[str, list]:
        cols = dict(self._cols)
        cols.update(self._metrics)
        for name, col in self._params.items():
            cols[name if name not in cols else f"param_{name}"] = col
        return cols

    def __len__(self) -> int:
        return len(self._cols["epoch"])

    def __iter__(self) -> Iterator[EpochRecord]:
        return iter([self[i] for i in range(len(self))])

    def __getitem__(self, key: int | str | slice) -> EpochRecord | list:
        """An int gives that epoch's record, a slice a list of them, a str a column copy."""
        if isinstance(key, slice):
            return [self[i] for i in range(len(self))[key]]
        with self._lock:
            if isinstance(key, str):
                cols = self._all_columns()
                if key not in cols:
                    raise KeyError(f"no column {key!r}; columns are {', '.join(cols)}")
                return list(cols[key])
            i = range(len(self._cols["epoch"]))[key]  # IndexError for a bad index
            c = self._cols
            return EpochRecord(
                epoch=c["epoch"][i],
                loss=c["loss"][i],
                val_loss=c["val_loss"][i],
                metrics={k: v[i] for k, v in self._metrics.items() if v[i] is not None},
                learning_rate=c["learning_rate"][i],
                grad_norm=c["grad_norm"][i],
                seconds=c["seconds"][i],
                params={k: v[i] for k, v in self._params.items()} or None,
            )

    @property
    def last(self) -> EpochRecord | None:
        """The latest epoch's record, or None before the first epoch."""
        return self[-1] if len(self) else None

    @property
    def epochs(self) -> int:
        """How many epochs are recorded."""
        return len(self)

    @property
    def columns(self) -> list[str]:
        """Column names, as in `to_dict()` and the CSV header."""
        with self._lock:
            return list(self._all_columns())

    def to_dict(self) -> dict[str, list]:
        """Columns by name, like Keras `History.history` (plus epoch and parameters)."""
        with self._lock:
            return {name: list(col) for name, col in self._all_columns().items()}

    def to_csv(self, path: str) -> None:
        """Write one row per epoch; empty cells where a value does not exist."""
        cols = self.to_dict()
        with open(path, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(cols)
            for row in zip(*cols.values(), strict=True):
                writer.writerow(["" if v is None else v for v in row])

    def to_pandas(self) -> Any:
        """A DataFrame indexed by epoch (needs pandas)."""
        try:
            import pandas as pd
        except ImportError as err:
            raise ImportError(
                "History.to_pandas() needs pandas, which is not installed: "
                "`pip install pandas`, or use to_dict() / to_csv(path)"
            ) from err
        return pd.DataFrame(self.to_dict()).set_index("epoch")

    # -- checkpoints -----------------------------------------------------------------

    def to_json(self) -> str:
        """Serialise for a checkpoint (NaN and Inf become strings, which JSON lacks)."""

        def enc(v):
            return str(v) if isinstance(v, float) and not math.isfinite(v) else v

        with self._lock:
            data = {
                "columns": {k: [enc(v) for v in col] for k, col in self._cols.items()},
                "metrics": {k: [enc(v) for v in col] for k, col in self._metrics.items()},
                "params": {k: [enc(v) for v in col] for k, col in self._params.items()},
            }
        if self._gradients is not None:
            data["gradients"] = self._gradients.to_json()
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> History:
        """Inverse of `to_json`."""

        def dec(v):
            return float(v) if isinstance(v, str) else v

        data = json.loads(text)
        hist = cls(list(data["metrics"]), list(data["params"]))
        for group, target in (
            ("columns", hist._cols),
            ("metrics", hist._metrics),
            ("params", hist._params),
        ):
            for k, col in data[group].items():
                target.setdefault(k, []).extend(dec(v) for v in col)
        if "gradients" in data:
            hist._gradients = GradientTable.from_json(data["gradients"])
        return hist

    # -- display ---------------------------------------------------------------------

    def __repr__(self) -> str:
        n = len(self)
        if not n:
            return "History(0 epochs)"
        last = self[-1]
        text = f"History({n} epochs, last loss {last.loss:.6g}"
        if last.val_loss is not None:
            text += f", val_loss {last.val_loss:.6g}"
        return text + ")"

    def _repr_html_(self) -> str:
        """The last few epochs as a small table."""
        cols = {k: v[-5:] for k, v in self.to_dict().items() if any(x is not None for x in v)}
        if not cols.get("epoch"):
            return "<p>History: no epochs yet</p>"
        head = "".join(f"<th>{k}</th>" for k in cols)
        rows = "".join(
            "<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in row) + "</tr>"
            for row in zip(*cols.values(), strict=True)
        )
        return (
            f"<p>History: {len(self)} epochs (last 5 shown)</p><table><tr>{head}</tr>{rows}</table>"
        )


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    return f"{v:.6g}" if isinstance(v, float) else str(v)
