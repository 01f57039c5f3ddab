"""Training under a `tf.distribute` strategy: checks, the split of each batch, the steps.

Each global batch is the one a single device would train on (same slices, same
shuffle). In-memory arrays are cut into one contiguous part per replica with
`experimental_distribute_values_from_function`; a Dataset goes through
`experimental_distribute_dataset`. Each replica scales its loss so that the sum over
replicas is the single-device loss of the whole batch: by 1 for a loss that sums over
samples (the seed's reduce_sum), by n_local / n_global for one that averages (Keras's
"mse"); the optimizer then sums the gradients across replicas, as Keras does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import tensorflow as tf

from tapemagic.training.distributed.cluster import cluster_role
from tapemagic.training.objectives import scalar_loss
from tapemagic.training.steps import Steps, all_scalar, differentiate, gradient_summaries
from tapemagic.training.subject import Style
from tapemagic.training.user_warnings import warn_user
from tapemagic.variables import unwrap

REDUCTIONS = ("sum", "mean")
PROBE_SAMPLES = 16  # samples the loss is probed on to tell a sum from a mean
PROBE_RTOL = 1e-3


class Replicas:
    """What the trainer needs to know and do about its strategy."""

    def __init__(self, strategy: Any, loss_reduction: str | None = None):
        if not isinstance(strategy, tf.distribute.Strategy):
            raise ValueError(
                f"strategy must be a tf.distribute.Strategy (e.g. MirroredStrategy()), "
                f"got {type(strategy).__name__}"
            )
        if loss_reduction not in (None, *REDUCTIONS):
            raise ValueError(
                f"loss_reduction must be 'sum', 'mean' or None, not {loss_reduction!r}"
            )
        self.strategy = strategy
        self.count = int(strategy.num_replicas_in_sync)
        self.reduction = loss_reduction  # None until `decide_reduction`
        self.role = cluster_role(strategy)
        self.host = "/CPU:0"  # where the data lives; each replica gets its slices

    @property
    def name(self) -> str:
        """The public name (MultiWorkerMirroredStrategy's class is CollectiveAllReduceStrategy)."""
        for cls in type(self.strategy).__mro__:
            for name in ("MultiWorkerMirroredStrategy", cls.__name__):
                if getattr(tf.distribute, name, None) is cls:
                    return name
        return type(self.strategy).__name__

    def scope(self) -> Any:
        return self.strategy.scope()

    def describe(self, global_batch: int | None) -> str:
        """E.g. 'MirroredStrategy · 2 replicas · global batch 64'."""
        parts = [self.name]
        if self.role.workers > 1:
            parts.append(f"{self.role.workers} workers")
        parts.append(f"{self.count} replica{'s' if self.count != 1 else ''}")
        parts.append(f"global batch {global_batch if global_batch else '?'}")
        if self.role.workers > 1:
            parts.append("chief" if self.role.chief else self.role.task)
        return " · ".join(parts)

    # -- checks ------------------------------------------------------------------------

    def check_variables(self, variables: Sequence[Any], names: Sequence[str]) -> None:
        """Every variable must come from this strategy's scope (else: not mirrored)."""
        created = self.strategy.extended.variable_created_in_scope
        away = [n for v, n in zip(variables, names, strict=True) if not created(unwrap(v))]
        if away:
            more = f" and {len(away) - 3} more" if len(away) > 3 else ""
            raise ValueError(
                f"{', '.join(away[:3])}{more} {'was' if len(away) == 1 else 'were'} created "
                f"outside this {self.name}'s scope (was the strategy made after the model?): "
                "make the strategy first, then create the model or Variables inside "
                "`with strategy.scope():`"
            )

    def check_optimizer(self, optimizer: Any) -> None:
        """A Keras optimizer remembers the strategy it was made under."""
        made_under = getattr(optimizer, "_distribution_strategy", self.strategy)
        if made_under is not self.strategy:
            raise ValueError(
                f"the optimizer {type(optimizer).__name__} was made outside this "
                f"{self.name}'s scope: make it inside `with strategy.scope():`, or pass "
                "its name (optimizer='adam') and the trainer makes it there"
            )

    def check_style(self, kind: str, device: str) -> None:
        if kind == "step":
            raise ValueError(
                "step= cannot run under a strategy: your step takes its own tape and update, "
                "which the strategy must split and sum; pass model= or params= with predict="
            )
        if str(device).lower() != "auto":
            raise ValueError(
                f"device={device!r} and strategy= both place the work: drop device= (the "
                "strategy's replicas are its devices)"
            )

    def local_copies(self, variables: Sequence[Any]) -> list:
        """Each variable's first copy on this worker: what eager code outside the
        replicas reads, so what an eager gradient there must be taken against."""
        local = self.strategy.experimental_local_results
        return [local(unwrap(v))[0] for v in variables]

    # -- the loss reduction --------------------------------------------------------------

    def decide_reduction(self, loss_fn: Callable, y: Any, pred: Any) -> str:
        """'sum' or 'mean', from the loss on a batch and on its two halves."""
        if self.reduction is not None:
            return self.reduction
        n = int(tf.shape(tf.nest.flatten(y)[0])[0])
        if n < 2:
            raise ValueError(
                "under a strategy the trainer must know whether the loss sums or averages "
                "over samples, and cannot tell from one sample: pass loss_reduction='sum' "
                "or 'mean'"
            )
        n = min(n, PROBE_SAMPLES)
        h = n // 2

        def loss(lo: int, hi: int) -> float:
            ys, ps = tf.nest.map_structure(lambda t: t[lo:hi], (y, pred))
            return float(scalar_loss(loss_fn(ys, ps)).numpy())

        whole, first, second = loss(0, n), loss(0, h), loss(h, n)
        as_sum, as_mean = first + second, (h * first + (n - h) * second) / n
        scale = max(abs(whole), abs(first) + abs(second), 1e-30)
        is_sum = abs(whole - as_sum) <= PROBE_RTOL * scale
        is_mean = abs(whole - as_mean) <= PROBE_RTOL * scale
        if is_sum and is_mean:  # e.g. a loss of 0 on this batch
            warn_user(
                "cannot tell whether the loss sums or averages over samples (it is "
                f"{whole:g} on the first batch); taking it as a mean: pass "
                "loss_reduction='sum' if it sums"
            )
            is_sum = False
        if not (is_sum or is_mean):
            raise ValueError(
                f"the loss is neither a sum nor a mean over samples ({whole:g} on {n} "
                f"samples; {first:g} and {second:g} on their halves), so it cannot be split "
                "across replicas: make it one (e.g. reduce_sum or reduce_mean of per-sample "
                "terms), or pass loss_reduction='sum' or 'mean' to say how to combine them"
            )
        self.reduction = "sum" if is_sum else "mean"
        return self.reduction

    # -- data ----------------------------------------------------------------------------

    def distribute_dataset(self, ds: tf.data.Dataset, steps: int | None) -> Callable[[], Any]:
        """A factory of host-side iterators over the distributed, repeated Dataset.

        (An iterator over a repeated distributed Dataset made inside a tf.function
        never returns its first element on TF 2.21: so they are made on the host.)"""
        if steps is None:
            raise ValueError(
                "under a strategy the Dataset needs a known length (a filter or similar "
                "makes it unknown): add .apply(tf.data.experimental.assert_cardinality(n))"
            )
        dist = self.strategy.experimental_distribute_dataset(ds.repeat())
        return lambda: iter(dist)

    def _split(self, x: Any, y: Any) -> tuple[tuple[Any, Any], Any]:
        """A global batch as per-replica parts, and its size (None: already split)."""
        if isinstance(tf.nest.flatten((x, y))[0], tf.distribute.DistributedValues):
            return (x, y), None
        n, k = tf.shape(tf.nest.flatten(y)[0])[0], self.count
        with tf.device(self.host):  # cut on the host: each device receives only its part
            parts = [
                tf.nest.map_structure(lambda t, r=r: t[n * r // k : n * (r + 1) // k], (x, y))
                for r in range(k)
            ]

        def part(ctx):
            return tf.nest.map_structure(tf.identity, parts[ctx.replica_id_in_sync_group])

        return self.strategy.experimental_distribute_values_from_function(part), n

    # -- the steps -----------------------------------------------------------------------

    def split_steps(
        self,
        style: Style,
        loss_fn: Callable,
        optimizer: Any,
        train_metrics: Sequence[Any],
        val_metrics: Sequence[Any],
    ) -> Steps:
        """Train and evaluation steps on a global batch (`steps.make_steps` under a strategy).

        They return what the single-device steps return (global loss, gradient summaries)
        and update the metrics in each replica (so the loop must not)."""
        strategy, count = self.strategy, self.count
        mean = self.reduction == "mean"
        forward = style.forward
        values = all_scalar(style.trainable)

        def local_loss(y, pred, n_global):
            n_local = tf.shape(tf.nest.flatten(y)[0])[0]
            if n_global is None:  # a distributed Dataset: sizes known only per replica
                n_global = tf.distribute.get_replica_context().all_reduce("sum", n_local)
            loss = scalar_loss(loss_fn(y, pred))
            if mean:
                loss = loss * tf.cast(n_local, loss.dtype) / tf.cast(n_global, loss.dtype)
            return tf.where(n_local > 0, loss, tf.zeros_like(loss))  # an empty part: 0

        def replica_train(x, y, n_global):
            ctx = tf.distribute.get_replica_context()
            g = differentiate(style, lambda y, pred: local_loss(y, pred, n_global), x, y, count)
            for m in train_metrics:
                m.update_state(y, g.pred)
            # The whole batch's loss and gradient, for the history and the NaN check;
            # apply_gradients sums the local gradients across replicas itself.
            present = [d for d in g.grads if d is not None]
            summed = ctx.all_reduce("sum", [tf.cast(g.loss, tf.float32), *present])
            optimizer.apply_gradients(g.pairs)
            it = iter(summed[1:])
            whole = [next(it) if d is not None else None for d in g.grads]
            return summed[0], gradient_summaries(whole, values)

        def replica_eval(x, y, n_global):
            pred = forward(x, False)
            loss = local_loss(y, pred, n_global)
            for m in val_metrics:
                m.update_state(y, pred)
            return tf.distribute.get_replica_context().all_reduce("sum", tf.cast(loss, tf.float32))

        def first(value):
            return strategy.experimental_local_results(value)[0]

        def train_step(x, y):
            (xd, yd), n = self._split(x, y)
            loss, summaries = strategy.run(replica_train, args=(xd, yd, n))
            return first(loss), [first(s) for s in summaries], None

        def eval_step(x, y):
            (xd, yd), n = self._split(x, y)
            return first(strategy.run(replica_eval, args=(xd, yd, n))), None

        return Steps(train_step, eval_step, True)
