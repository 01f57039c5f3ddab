"""The training panel's widgets: made from the trainer's settings, laid out, named for
styling and browser tests, and wired to the panel's actions and handlers."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import ipywidgets as w

from tapemagic.jupyter.panel_views import ViewChooser
from tapemagic.training.objectives import OPTIMIZERS
from tapemagic.training.trainer import Trainer

if TYPE_CHECKING:
    from tapemagic.jupyter.panel import TrainingPanel

BATCH_SIZES = [None, 1, 8, 16, 32, 64, 128, 256, 512, 1024, 4096]
WIDE = {"description_width": "initial"}  # labels in full, not cut to a fixed width


def build(panel: TrainingPanel, epochs: int) -> None:
    """Give `panel` its widgets (as attributes) and its whole view, `panel.widget`."""
    t = panel.trainer
    button = w.Button
    panel.train_button = button(description="Train", icon="play", button_style="success")
    panel.pause_button = button(description="Pause", icon="pause")
    panel.step_button = button(description="Step", icon="step-forward", tooltip="one epoch")
    panel.stop_button = button(description="Stop", icon="stop", button_style="danger")
    panel.reset_button = button(description="Reset", icon="undo", tooltip="first weights")
    # Not a BoundedIntText: that one clamps out-of-range input silently in the page.
    panel.epochs = w.IntText(value=epochs, description="epochs", style=WIDE)
    lr = t.learning_rate
    low, high = lr_range(lr or 1e-3)
    panel.learning_rate = w.FloatLogSlider(
        value=lr or 1e-3, base=10, min=low, max=high, step=0.1, description="learning rate",
        readout_format=".2g", disabled=lr is None, continuous_update=False, style=WIDE,
    )  # fmt: skip
    opt = optimizer_name(t.optimizer)
    panel.optimizer = w.Dropdown(
        options=list(OPTIMIZERS) if opt in OPTIMIZERS else [*OPTIMIZERS, opt],
        value=opt, description="optimizer", disabled=t.optimizer is None, style=WIDE,
    )  # fmt: skip
    sizes = BATCH_SIZES if t.batch_size in BATCH_SIZES else [*BATCH_SIZES, t.batch_size]
    # A Dropdown cannot hold None as a choice: 0 stands for "all" (the whole data).
    panel.batch_size = w.Dropdown(
        options=[("all", 0) if s is None else (str(s), s) for s in sizes],
        value=t.batch_size or 0, description="batch size", style=WIDE,
    )  # fmt: skip
    # Under a tf.distribute strategy, a line naming it replaces the device choice.
    devices = ["auto", *Trainer.available_devices()] if t.strategy is None else [t.device]
    panel.device = w.Dropdown(options=devices, value=t.device, description="device", style=WIDE)
    panel.strategy = w.HTML()
    if t.strategy is not None:
        panel.device.layout.display = "none"
    panel.log_scale = w.Checkbox(value=False, description="log scale", indent=False)
    panel.smoothing = w.FloatSlider(
        value=0.0, min=0.0, max=0.99, step=0.01, description="smoothing",
        continuous_update=False,
    )  # fmt: skip
    panel.plot = w.Image(format="png", layout=w.Layout(width="480px"))
    panel.progress = w.IntProgress(value=0, min=0, max=1, layout=w.Layout(width="320px"))
    panel.status = w.HTML()
    panel.params = w.HTML()
    panel.messages = w.HTML()
    panel.train_button.on_click(lambda _: panel.train())
    panel.pause_button.on_click(lambda _: panel.toggle_pause())
    panel.step_button.on_click(lambda _: panel.step())
    panel.stop_button.on_click(lambda _: panel.stop())
    panel.reset_button.on_click(lambda _: panel.reset())
    panel.learning_rate.observe(panel._on_lr, "value")
    panel.epochs.observe(panel._on_epochs, "value")
    panel.optimizer.observe(lambda ch: panel._setting("optimizer", ch.new), "value")
    panel.batch_size.observe(lambda ch: panel._setting("batch_size", ch.new or None), "value")
    panel.device.observe(panel._on_device, "value")
    for box in (panel.log_scale, panel.smoothing):
        box.observe(lambda _: panel.refresh(force_plot=True), "value")
    loss_view = w.HBox([panel.plot, w.VBox([panel.log_scale, panel.smoothing, panel.params])])
    panel.views = ViewChooser(panel, loss_view)
    buttons = [panel.train_button, panel.pause_button, panel.step_button, panel.stop_button]
    panel.widget = w.VBox(
        [
            w.HBox([*buttons, panel.reset_button]),
            w.HBox([panel.epochs, panel.learning_rate]),
            w.HBox([panel.optimizer, panel.batch_size, panel.device, panel.strategy]),
            w.HBox([panel.progress, panel.status]),
            panel.views.buttons,
            panel.views.area,
            panel.messages,
        ]
    )
    # Stable names for the page's elements, for styling and for browser tests.
    panel.widget.add_class("tapemagic-panel")
    for name in ("epochs", "status", "plot", "progress", "params", "messages"):
        getattr(panel, name).add_class(f"tapemagic-{name}")


def lr_range(lr: float) -> tuple[int, int]:
    """The slider's exponents: the default 1e-6..10, widened to hold `lr` with room around."""
    e = math.log10(lr)
    return min(-6, math.floor(e) - 2), max(1, math.ceil(e) + 1)


def optimizer_name(opt: Any) -> str:
    if opt is None:
        return "own step"
    name = type(opt).__name__.lower()
    if name == "sgd" and float(getattr(opt, "momentum", 0.0) or 0.0) > 0:
        return "momentum"
    return name
