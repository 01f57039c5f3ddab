"""Checkpoints: weights, optimizer state and the history, saved together.

The history travels inside the checkpoint as a JSON string, so the weights and the
epochs they belong to are written (and restored) as one unit: a kernel restart resumes
exactly where the last save left off. The string is Python state, not a `tf.Variable`:
under MultiWorkerMirroredStrategy a variable is broadcast from the chief, and strings
cannot be.

With several workers, all of them save (reading a metric's variables all-reduces them
across workers), but only the chief writes to `directory`; the others write to a
directory of their own that is deleted after each save. Everyone resumes from
`directory`.

Owns the Trainer's `checkpoint_dir` and `checkpoint_every`.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping
from typing import Any

import tensorflow as tf

from tapemagic.variables import unwrap

FORMAT = 1
META_KEYS = ("meta/.ATTRIBUTES/py_state", "meta/.ATTRIBUTES/VARIABLE_VALUE")  # new, older


def check_every(every: Any) -> int | None:
    """`checkpoint_every`: None or a positive int, else a one-line ValueError."""
    if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
        raise ValueError(f"checkpoint_every must be a positive int, got {every!r}")
    return every


class _Meta(tf.train.experimental.PythonState):
    """A JSON string saved inside the checkpoint."""

    def __init__(self) -> None:
        self.text = ""

    def serialize(self) -> str:
        return self.text

    def deserialize(self, string_value: Any) -> None:
        value = string_value.numpy() if hasattr(string_value, "numpy") else string_value
        self.text = value.decode() if isinstance(value, bytes) else str(value)


class CheckpointStore:
    """A `tf.train.CheckpointManager` over named variables plus a JSON `meta` string.

    `writer=False` (a worker that is not the chief): saves go to a temporary directory
    that is deleted at once; reads still come from `directory`.
    """

    def __init__(self, directory: str, max_to_keep: int = 3, writer: bool = True):
        self.directory = str(directory)
        self.max_to_keep = max_to_keep
        self.writer = writer
        self._meta = _Meta()
        self._variables: dict[str, Any] = {}
        self._manager: tf.train.CheckpointManager | None = None
        self._ckpt: tf.train.Checkpoint | None = None

    def bind(self, variables: Mapping[str, Any]) -> None:
        """Use these variables from now on (again after the optimizer changes)."""
        self._variables = {k: unwrap(v) for k, v in variables.items()}
        self._ckpt = tf.train.Checkpoint(meta=self._meta, **self._variables)
        if self.writer:
            self._manager = tf.train.CheckpointManager(self._ckpt, self.directory, self.max_to_keep)

    @property
    def latest(self) -> str | None:
        """Path of the newest checkpoint in the directory, if any."""
        return tf.train.latest_checkpoint(self.directory)

    def save(self, meta: dict) -> str:
        """Write the variables and `meta` (which must be JSON-serialisable)."""
        self._meta.text = json.dumps({"format": FORMAT, **meta})
        if self.writer:
            return self._manager.save()
        scratch = tempfile.mkdtemp(prefix="tapemagic-worker-ckpt-")
        try:
            return self._ckpt.write(f"{scratch}/ckpt")
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def read_meta(self, path: str | None = None) -> dict | None:
        """The meta of a checkpoint without touching any variable."""
        path = path or self.latest
        if path is None:
            return None
        reader = tf.train.load_checkpoint(path)
        key = next((k for k in META_KEYS if reader.has_tensor(k)), META_KEYS[0])
        value = reader.get_tensor(key)
        return json.loads(value.decode() if isinstance(value, bytes) else value)

    def restore(self, skip: tuple[str, ...] = ()) -> dict | None:
        """Load the newest checkpoint into the bound variables; its meta, or None if none.

        Names starting with a prefix in `skip` are left alone (e.g. optimizer slots when
        the optimizer changed since the save).
        """
        path = self.latest
        if path is None:
            return None
        meta = self.read_meta(path)
        reader = tf.train.load_checkpoint(path)
        saved = dict(tf.train.list_variables(path))
        problems = []
        for name, var in self._variables.items():
            if name.startswith(skip):
                continue
            key = f"{name}/.ATTRIBUTES/VARIABLE_VALUE"
            if key not in saved:
                problems.append(f"{name} missing")
            elif tuple(saved[key]) != tuple(var.shape):
                problems.append(f"{name} has shape {tuple(saved[key])}, here {tuple(var.shape)}")
        if problems:
            raise ValueError(
                f"checkpoint {path} does not fit this trainer ({'; '.join(problems[:3])}); "
                "use another checkpoint_dir for a different model"
            )
        for name, var in self._variables.items():
            if not name.startswith(skip):
                var.assign(reader.get_tensor(f"{name}/.ATTRIBUTES/VARIABLE_VALUE"))
        return meta

    def resume(self, optimizer_name: str | None) -> dict | None:
        """Restore the newest checkpoint, optimizer slots only if it is the same optimizer."""
        meta = self.read_meta()
        if meta is None:
            return None
        same = meta.get("optimizer") == optimizer_name
        return self.restore(skip=() if same else ("o",))
