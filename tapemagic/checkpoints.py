"""Checkpoints: weights, optimizer state and the history, saved together.

The history travels inside the checkpoint as a JSON string in a `tf.Variable`, so the
weights and the epochs they belong to are written (and restored) as one unit: a kernel
restart resumes exactly where the last save left off.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import tensorflow as tf

from tapemagic.training_setup import raw

FORMAT = 1


class CheckpointStore:
    """A `tf.train.CheckpointManager` over named variables plus a JSON `meta` string."""

    def __init__(self, directory: str, max_to_keep: int = 3):
        self.directory = str(directory)
        self.max_to_keep = max_to_keep
        self._meta = tf.Variable("", dtype=tf.string, trainable=False, name="tapemagic_meta")
        self._variables: dict[str, Any] = {}
        self._manager: tf.train.CheckpointManager | None = None

    def bind(self, variables: Mapping[str, Any]) -> None:
        """Use these variables from now on (again after the optimizer changes)."""
        self._variables = {k: raw(v) for k, v in variables.items()}
        ckpt = tf.train.Checkpoint(meta=self._meta, **self._variables)
        self._manager = tf.train.CheckpointManager(ckpt, self.directory, self.max_to_keep)

    @property
    def latest(self) -> str | None:
        """Path of the newest checkpoint in the directory, if any."""
        return tf.train.latest_checkpoint(self.directory)

    def save(self, meta: dict) -> str:
        """Write the variables and `meta` (which must be JSON-serialisable)."""
        self._meta.assign(json.dumps({"format": FORMAT, **meta}))
        return self._manager.save()

    def read_meta(self, path: str | None = None) -> dict | None:
        """The meta of a checkpoint without touching any variable."""
        path = path or self.latest
        if path is None:
            return None
        reader = tf.train.load_checkpoint(path)
        return json.loads(reader.get_tensor("meta/.ATTRIBUTES/VARIABLE_VALUE").decode())

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
