"""Non-finite losses and gradients: the record of one and the message that explains it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


class TrainingFault(RuntimeWarning):
    """Warned when a NaN or Inf loss or gradient pauses training."""


@dataclass
class Fault:
    """Where training went non-finite, and which variables' gradients did."""

    epoch: int
    batch: int
    loss: float
    variables: list[str] = field(default_factory=list)
    message: str = ""


def fault_message(
    epoch: int,
    batch: int,
    loss: float,
    variables: list[str],
    learning_rate: float | None,
    restored: str | None,
    kind: str,
) -> str:
    """One paragraph: what went non-finite where, what was done, what to try."""
    what = f"loss is {loss:g}" if not math.isfinite(loss) else "loss is finite"
    if variables:
        what += f"; non-finite gradient for {', '.join(variables)}"
    elif kind != "step" and math.isfinite(loss):
        what += "; the gradient norm overflowed"
    text = f"Training paused at epoch {epoch}, batch {batch}: {what}."
    if restored:
        text += f" Weights restored to the last finite step ({restored})."
    else:
        text += " Weights left as they are; trainer.restore_last_finite() goes back."
    hint = " Try a smaller learning rate"
    if learning_rate is not None:
        hint += f" (now {learning_rate:g})"
    return text + hint + ", or look for log/sqrt/division of values that reach 0."
