"""The training core: `Trainer` and its engine. TensorFlow and Keras only (no IPython).

Separation of concerns: each module has one job and owns the `Trainer` keyword arguments
it checks. What crosses a module boundary is a named type (in brackets).

- `trainer.py`: the public `Trainer`: its API, the run loop's bookkeeping (history,
  listeners, callbacks, faults, checkpoints in order) and the settings that change
  between runs. Owns `device`.
- `parts.py`: assembly: calls the modules below, in the order their dependencies need,
  to turn the keyword arguments into what the trainer trains with [`Parts`], and makes
  the compiled loop from those parts.
- `subject.py`: what is trained, in one of three styles: `params`/`predict`, `model`,
  `step`. Checked first [`SubjectSpec`], then built on a sample batch into a complete,
  frozen [`Style`]; also the variables' display names.
- `objectives.py`: `optimizer`, `learning_rate`, `loss`, `metrics`: names become
  optimizer, loss and metric objects [`Metrics`].
- `data.py`: `data`, `validation_data`, `validation_split`, `batch_size`: arrays or a
  Dataset, checked and placed [`ArrayData`, `DatasetData`].
- `steps.py`: the step functions the loop calls, for every style and strategy (one
  `make_steps`) [`Steps`, `Gradients`], and the construction-time probe.
- `loop.py`: the compiled loop: one `tf.function` call runs a span of steps, shuffling
  batches by `shuffle` and `seed`, and rolls back on error [`RowLayout`, `CallResult`].
- `pacing.py`: where training stands and how big the next call is [`Position`,
  `PartialEpoch`, `CallPlan`]; what a call completed [`Completed`].
- `controls.py`: stop, pause, resume, step and a pending learning rate, set from
  another thread (a panel's) and read between calls.
- `faults.py`: `on_nonfinite`: finding a NaN/Inf step, replaying to the last finite
  one, the message [`FaultSite`, `FaultedCall`, `Fault`].
- `callbacks.py`: `callbacks`: Keras callbacks driven without `model.fit`.
- `history.py`: the per-epoch records, stored by column [`EpochColumns`, `EpochRecord`].
- `checkpoints.py`: `checkpoint_dir`, `checkpoint_every`, `resume`: weights, optimizer
  state and history saved and resumed together; damaged directories refused; one writer.
- `ownership.py`: one running trainer per set of variables: a newer trainer stops and
  supersedes an older one on the same variables.
- `trajectory.py`: `record_trajectory`: the weights after each epoch, thinned to bounded
  memory [`Trajectory`, `TrajectoryPoints`].
- `slice_loss.py`, `landscape.py`: the loss at other weights in one compiled call, and the
  landscape around the run [`Landscape`, `LineProfile`]; `compare.py`: copies of one model
  trained side by side, one per optimizer [`Comparison`], in one compiled call where the
  model allows it (`race.py`).
- `health.py`, `health_table.py`, `health_watch.py`, `health_first_step.py`: `health`:
  per-layer gradient statistics recorded in the compiled step and the findings they raise
  [`HealthThresholds`, `Finding`, `GradientTable`].
- `livelog.py`: the record behind the live view for `model.fit` and hand-written loops.
- `distributed/replicas.py`: `strategy`, `loss_reduction`: checks, each batch split
  across replicas, the steps there (`Replicas.split_steps`).
- `distributed/lockstep.py`: several workers: the chief's orders reach every worker
  before each call [`Order`].
- `distributed/cluster.py`: a multi-worker strategy that fails instead of hanging
  (public as `tapemagic.distribute`).
"""
