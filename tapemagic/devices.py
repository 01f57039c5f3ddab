"""Device names as users write them ('auto', 'cpu', 'GPU:1', '/device:GPU:0') resolved
against what TensorFlow sees; one place for `%%tape --device` and `Trainer(device=)`."""

from __future__ import annotations

import tensorflow as tf


def available() -> list[str]:
    """The devices TensorFlow sees, as device= accepts them ('/CPU:0', '/GPU:0', ...)."""
    return [d.name.replace("/device:", "/") for d in tf.config.list_logical_devices()]


def resolve(device: str | None) -> str:
    """'/CPU:0'-style name of a device that exists; 'auto' (or None) is the first GPU, else
    the CPU. An unknown one is a ValueError listing what there is."""
    known = available()
    if device is None or str(device).strip().lower() == "auto":
        gpus = [d for d in known if "/GPU:" in d]
        return gpus[0] if gpus else "/CPU:0"
    text = str(device).strip().replace("/device:", "/").lstrip("/").upper()
    if text in ("CPU", "GPU"):
        text += ":0"
    name = "/" + text
    if name not in known:
        raise ValueError(
            f"device={device!r} is not available; TensorFlow sees: {', '.join(known)}. "
            "Use device='auto' or one of those"
        )
    return name
