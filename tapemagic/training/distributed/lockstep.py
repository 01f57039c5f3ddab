"""Several workers, one decision-maker: the chief's orders travel to every worker.

Under MultiWorkerMirroredStrategy each process runs its own Trainer, and every compiled
call holds collective ops that all workers must enter together, with the same plan. So
what the chief decides (how many epochs the next call covers, the learning rate and
batch size, stop, reset) is sent to the workers before each call, as one small
all-reduce in which only the chief's first replica contributes. Results are identical
everywhere (losses and gradients are all-reduced), so what follows from them (history,
faults, callbacks, when to checkpoint) needs no message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

from tapemagic.training.pacing import CallPlan

CALL, END, RESET, CLOSE = 1, 2, 3, 4
WIDTH = 8  # numbers in one order


@dataclass
class Order:
    """One decision of the chief."""

    kind: int
    plan: CallPlan = CallPlan(0, 0)  # what the call runs
    learning_rate: float | None = None
    batch_size: int | None = None
    target: int = 0

    def encode(self) -> np.ndarray:
        e0, n, b0, b1 = self.plan
        return np.array(
            [self.kind, e0, n, b0, -1 if b1 is None else b1, self.learning_rate or 0.0,
             self.batch_size or 0, self.target],
            dtype=np.float64,
        )  # fmt: skip

    @classmethod
    def decode(cls, row: np.ndarray) -> Order:
        kind, e0, n, b0, b1, lr, bs, target = (float(v) for v in row[:WIDTH])
        plan = CallPlan(int(e0), int(n), int(b0), None if b1 < 0 else int(b1))
        return cls(int(kind), plan, lr or None, int(bs) or None, int(target))


class Lockstep:
    """Orders from the chief to the workers, and a first exchange to compare setups."""

    def __init__(self, strategy: Any, chief: bool):
        self.chief = chief
        self._strategy = strategy
        self._fns: dict[int, Any] = {}

    def gather(self, row: np.ndarray) -> np.ndarray:
        """Every replica's row (this process's replicas all give `row`), in replica order."""
        row = np.asarray(row, dtype=np.float64)
        fn = self._fns.get(row.size)
        if fn is None:
            fn = self._fns[row.size] = tf.function(self._gather)
        return fn(tf.constant(row)).numpy()

    def _gather(self, row: tf.Tensor) -> tf.Tensor:
        strategy = self._strategy
        count = strategy.num_replicas_in_sync

        def replica():
            ctx = tf.distribute.get_replica_context()
            mine = tf.one_hot(ctx.replica_id_in_sync_group, count, dtype=tf.float64)
            return ctx.all_reduce("sum", mine[:, None] * row[None, :])

        return strategy.experimental_local_results(strategy.run(replica))[0]

    def agree(self, epoch: int, batch: int, samples: int, size: int, seed: int) -> int:
        """Check that every worker resumed at the same point with the same data and model
        size (else a ValueError on every worker); returns the chief's seed."""
        rows = self.gather([epoch, batch, samples, size, seed])
        chief = rows[0]
        for row in rows[1:]:
            if tuple(row[:2]) != tuple(chief[:2]):
                raise ValueError(
                    f"the workers resume at different points (epoch {int(row[0])} on one, "
                    f"epoch {int(chief[0])} on the chief): checkpoint_dir must be storage "
                    "every worker reads (a shared filesystem or a gs:// bucket)"
                )
            if tuple(row[2:4]) != tuple(chief[2:4]):
                raise ValueError(
                    "the workers differ in their data or model (samples or weights): run "
                    "the same program, with the same data, on every worker"
                )
        return int(chief[4])

    def send(self, order: Order) -> None:
        """On the chief: give every worker this order."""
        self.gather(order.encode())

    def receive(self) -> Order:
        """On a worker: wait for the chief's next order (as long as it takes)."""
        return Order.decode(self.gather(np.zeros(WIDTH))[0])
