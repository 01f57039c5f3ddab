"""The training panel's words: its status line, messages, error lines and printed epochs.

Pure functions of the trainer's state, so what the panel says can be read (and tested)
apart from the widgets that show it.
"""

from __future__ import annotations

import html
import math
import re
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from tapemagic.training.trainer import Trainer

MESSAGES_SHOWN = 4


class RunView(NamedTuple):
    """What the status line tells about the run, read once per refresh."""

    n: int  # epochs in the history
    start: int | None  # the epoch this run started at; None: no run since the panel (or Reset)
    done: int  # epochs done this run
    total: int  # epochs this run is to do
    running: bool
    holding: bool  # the trainer holds (paused)
    hold: bool  # a pause (or a step) was asked for this run
    stepping: bool  # the hold was asked by Step
    fault_left: int  # epochs a NaN/Inf fault left undone
    elapsed: float  # running time of this run, in seconds
    rate: float  # epochs per second of running time, this run


def status_line(run: RunView, t: Trainer) -> str:
    """One line: the run's state, epoch, batch, time, speed, learning rate and last loss."""
    n, start, done, total = run.n, run.start, run.done, run.total
    running, holding, elapsed, rate = run.running, run.holding, run.elapsed, run.rate
    per_epoch = t.samples_per_epoch
    this_run = f" ({done:,}/{total:,} this run)" if total else ""
    if running and holding:  # holding: the counter cannot move, so N stays N
        head = f"paused at epoch {n:,}{this_run}"
    elif running and run.hold:  # asked to hold: it does after the current call
        head = f"{'stepping' if run.stepping else 'pausing'} · epoch {n:,}{this_run}"
    elif not running and run.fault_left:
        head = (
            f"paused by a NaN/Inf at epoch {n:,}{this_run} (lower the learning rate, then Resume)"
        )
    else:
        head = f"{'running' if running else 'stopped'} · epoch {n:,}{this_run}"
    if t.batch and t.samples_per_epoch and t.batch_size:  # inside an epoch (or stopped in)
        steps = math.ceil(t.samples_per_epoch / t.batch_size)
        head += f" · batch {t.batch:,}/{steps:,}"
    parts = [head]
    if start is not None:
        parts.append(f"elapsed {duration(elapsed)}")
    if running and rate > 0 and not (holding or run.hold):
        parts.append(f"ETA {duration(max(total - done, 0) / rate)}")
    if rate > 0:
        parts.append(f"{rate:,.1f} epochs/s")
        if per_epoch:
            parts.append(f"{rate * per_epoch:,.0f} samples/s")
    if t.learning_rate is not None:
        parts.append(f"lr {t.learning_rate:.3g}")
    last = t.history.last
    if last is not None:
        parts.append(f"loss {last.loss:.6g}")
        if last.val_loss is not None:
            parts.append(f"val_loss {last.val_loss:.6g}")
        parts += [f"{k} {v:.4g}" for k, v in last.metrics.items()]
    return " · ".join(parts)


def epoch_progress(n: int, t: Trainer) -> float | None:
    """How far into epoch n+1 a run is, in epochs, when it is inside an epoch."""
    if not (t.batch and t.samples_per_epoch and t.batch_size):
        return None
    steps = math.ceil(t.samples_per_epoch / t.batch_size)
    return n + min(t.batch / steps, 1.0)


def fold_messages(
    lines: list[str], error: BaseException | None, shown: int = MESSAGES_SHOWN
) -> list[str]:
    """The last `shown` lines, each repeat folded into one line with a count; a message that
    repeats the error line is left out."""
    if error is not None:  # the error line says it: not twice
        said = str(error)
        lines = [m for m in lines if not (m.startswith("stopped by an error") and said in m)]
    folded: list[list] = []
    for line in lines:
        if folded and folded[-1][0] == line:
            folded[-1][1] += 1
        else:
            folded.append([line, 1])
    return [m if k == 1 else f"{m} (×{k})" for m, k in folded[-shown:]]


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, s = divmod(seconds, 60)
    return f"{minutes}m{s:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def params_html(values: dict[str, float]) -> str:
    if not values:
        return ""
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td style='text-align:right'><code>{v:.6g}</code></td></tr>"
        for k, v in values.items()
    )
    return f"<table style='font-size:90%'>{rows}</table>"


def messages_html(lines: list[str], error: BaseException | None, epoch: int = 0) -> str:
    items = [f"<div>{html.escape(one_line(line))}</div>" for line in lines]
    if error is not None:
        text = html.escape(error_line(error))
        items.append(f"<div style='color:#d62728'><b>error</b> at epoch {epoch}: {text}</div>")
    return "".join(items)


def error_line(error: BaseException) -> str:
    """The error's cause in one line: its type and the first line of its message (which
    Trainer.run makes the user's own), or the cause dug out of TensorFlow's trace."""
    return one_line(f"{type(error).__name__}: {error}")


_BOILERPLATE = re.compile(
    r"^(File |Detected at node|Graph execution error|\[\[|in user code:|\[Op:|"
    r"Arguments received|• )"
)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_RAISED = re.compile(r"^[\w.]*(?:Error|Exception|Exit|Interrupt): (.+)$")
# Keras wraps a layer's error: its first line only names the call; the cause comes next.
_KERAS_WRAPPER = "Exception encountered when calling"


def one_line(text: str) -> str:
    """One line of a message. A message whose first line is plain is that line (a Keras
    layer's wrapper line replaced by the cause it wraps); a tf.function error carries
    TensorFlow's traceback ("in user code: File ...", "Detected at node ..."): keep what
    comes before it and the raised message inside it."""
    lines = [ln for ln in (_ANSI.sub("", x).strip() for x in text.splitlines()) if ln]
    if not lines:
        return ""
    first = lines[0]
    head = first
    for marker in ("in user code:", "Graph execution error:"):
        head = head.split(marker)[0]
    if head == first and not _BOILERPLATE.match(first):
        if _KERAS_WRAPPER in first and len(lines) > 1:
            cause = _cause(lines[1:])
            return first.split(_KERAS_WRAPPER)[0] + cause if cause else first
        return first
    head = head.rstrip(": ")
    if head.isidentifier():  # just the exception's name: the message names it again
        head = ""
    elif head.endswith(("Error", "Exception")):  # "...at epoch 0: RuntimeError"
        head = head.rsplit(":", 1)[0]
    message = _cause(lines[1:]) or lines[-1]
    return f"{head}: {message}" if head else message


def _cause(lines: list[str]) -> str:
    """In a traceback's lines: the first raised "SomeError: message" (through a Keras
    wrapper), else the last line that is not TensorFlow's own."""
    for i, line in enumerate(lines):
        raised = _RAISED.match(line)
        if raised is None:
            continue
        if raised.group(1).startswith(_KERAS_WRAPPER):
            rest = [ln for ln in lines[i + 1 :] if not _BOILERPLATE.match(ln)]
            if rest:
                return line[: line.index(_KERAS_WRAPPER)] + rest[0]
        return line
    useful = [re.sub(r"\s*\[\[.*$", "", ln) for ln in lines if not _BOILERPLATE.match(ln)]
    return useful[-1] if useful else ""


def epoch_line(record: Any) -> str:
    parts = [f"epoch {record.epoch}", f"loss {record.loss:.7g}"]  # 0-based, as the seed
    if record.val_loss is not None:
        parts.append(f"val_loss {record.val_loss:.7g}")
    parts += [f"{k} {v:.5g}" for k, v in record.metrics.items()]
    if record.params:
        parts += [f"{k} = {v:.7g}" for k, v in record.params.items()]
    return "  ".join(parts)
