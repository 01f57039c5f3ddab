"""Keras 3 Variables and the `tf.Variable` under them, for both `tape/` and `training/`."""

from __future__ import annotations

from typing import Any

import tensorflow as tf


def unwrap(value: Any) -> Any:
    """The tf.Variable a Keras 3 Variable holds (tapes, assignments and checkpoints work on
    that one); anything else is returned as it is."""
    inner = getattr(value, "value", None)
    if isinstance(inner, tf.Variable) and type(value).__module__.startswith("keras"):
        return inner
    return value
