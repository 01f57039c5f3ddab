"""What the training panel's setting controls do to its trainer: the learning rate,
epochs, optimizer, batch size and device boxes, each change checked, applied now or when
the run ends, and told in the panel's messages."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from tapemagic.jupyter.panel_widgets import lr_range
from tapemagic.training import ownership
from tapemagic.training.trainer import Trainer

if TYPE_CHECKING:
    import ipywidgets as w

MAX_EPOCHS = 10**12  # the epochs box's upper bound: beyond it, surely a typo


class PanelSettings:
    """The setting controls' handlers, a part of `TrainingPanel` (which makes the widgets and
    has `_say`, `refresh` and `_on_superseded`)."""

    trainer: Trainer
    epochs: w.IntText
    learning_rate: w.FloatLogSlider
    device: w.Dropdown
    _kwargs: dict[str, Any]  # the Trainer's arguments, to remake it on another device
    _pending: dict[str, Any]  # settings that wait for the run to end
    _lr_echo: bool  # the panel itself is moving the slider: no message
    _remaking: bool  # the device menu is replacing the panel's own trainer

    def _say(self, text: str) -> None:
        raise NotImplementedError

    def refresh(self, force_plot: bool = False) -> None:
        raise NotImplementedError

    def _on_superseded(self, event: ownership.Supersession) -> None:
        raise NotImplementedError

    def _on_lr(self, change) -> None:
        if self._lr_echo:  # the panel following the trainer's rate: nothing to apply
            return
        try:
            self.trainer.learning_rate = change.new  # applies mid-run, from the next call
        except (ValueError, TypeError) as err:
            self._say(str(err))
            return
        when = "from the next step" if self.trainer.running else "for the next run"
        self._say(f"learning rate set to {change.new:.3g} {when}")
        self.refresh()

    def _on_epochs(self, change) -> None:
        """Refuse an out-of-range epochs box with a message, keeping the last good value."""
        try:
            check_epochs(change.new)
        except ValueError as err:
            self._say(f"{err}; kept {change.old:,}")
            self.epochs.unobserve(self._on_epochs, "value")
            self.epochs.value = change.old
            self.epochs.observe(self._on_epochs, "value")

    def _setting(self, name: str, value: Any) -> None:
        if self.trainer.running:
            self._pending[name] = value
            self._say(f"{name.replace('_', ' ')} {value!r} applies when this run ends")
        else:
            self._pending[name] = value
            self._apply_pending()
        self.refresh()

    def _apply_pending(self) -> None:
        for name in ("optimizer", "batch_size"):
            if name not in self._pending:
                continue
            value = self._pending.pop(name)
            try:
                setattr(self.trainer, name, value)
                if name == "optimizer" and self.learning_rate.value:
                    self.trainer.learning_rate = self.learning_rate.value
            except (ValueError, TypeError, RuntimeError) as err:
                self._say(str(err))

    def _on_device(self, change) -> None:
        t = self.trainer
        wanted = change.new
        if wanted == t.device or (wanted == "auto" and not self._kwargs):
            return
        if t.running or len(t.history) or not self._kwargs:
            reason = (
                "this panel wraps a Trainer you made: make it with device=..."
                if not self._kwargs
                else "the device is chosen before training starts: press Reset first"
            )
            self._say(reason)
            self.device.unobserve(self._on_device, "value")
            self.device.value = t.device
            self.device.observe(self._on_device, "value")
            return
        self._remaking = True  # the new trainer supersedes this panel's old one, not it
        try:
            self.trainer = Trainer(**{**self._kwargs, "device": wanted})
            ownership.watch(self.trainer, self._on_superseded)
        except (ValueError, RuntimeError) as err:
            self._say(str(err))
        finally:
            self._remaking = False
        self.refresh(force_plot=True)

    def _follow_learning_rate(self) -> None:
        """The slider shows the trainer's rate, its range widened to hold it (a rate set
        from code, or a trainer made with one outside the default range)."""
        lr = self.trainer.learning_rate
        if lr is None or not lr > 0 or math.isclose(self.learning_rate.value, lr, rel_tol=1e-6):
            return
        low, high = lr_range(lr)
        self._lr_echo = True
        try:
            s = self.learning_rate
            s.min, s.max = min(s.min, low), max(s.max, high)
            s.value = lr
        finally:
            self._lr_echo = False


def check_epochs(n: Any) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= MAX_EPOCHS:
        raise ValueError(f"epochs must be a whole number from 1 to {MAX_EPOCHS:,}, not {n!r}")
