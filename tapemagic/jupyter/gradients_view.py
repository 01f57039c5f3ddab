"""The training panel's "gradients" view: per-layer gradient norms and update ratios, and
the trainer's findings in words under them.

Made by the panel's view chooser as `GradientsView(panel)` the first time it is chosen,
then refreshed from the panel's view thread; it redraws only when the table has new
epochs, paced by `RedrawPacer` (a render takes about 0.1 s, so at most a few a second and
a small share of the wall time), and never raises: a failure is shown in its place.
"""

from __future__ import annotations

import html
import time
from typing import TYPE_CHECKING

import ipywidgets as w

from tapemagic.display.health_plot import HealthPlot
from tapemagic.jupyter.panel_timing import RedrawPacer

if TYPE_CHECKING:
    from tapemagic.jupyter.panel import TrainingPanel

OFF_TEXT = (
    "this trainer records no gradient statistics: it was made with health=False, or with "
    "step= (a step that takes its own gradient); make it with health=True and model= or "
    "params= to see each layer's gradient norm and update ratio"
)
MAX_FINDINGS_SHOWN = 8  # the newest; all are in trainer.findings


class GradientsView:
    """Each layer's gradient norm and update ratio over epochs, and the findings."""

    title = "gradients"

    def __init__(self, panel: TrainingPanel) -> None:
        self.panel = panel
        self.image = w.Image(format="png", layout=w.Layout(width="480px"))
        self.findings = w.HTML()
        self.note = w.HTML()
        self.widget = w.VBox([self.note, self.image, self.findings])
        self._plot: HealthPlot | None = None  # made at the first draw (matplotlib import)
        self._pacer = RedrawPacer()
        self._shown_findings = -1

    def refresh(self, force: bool) -> None:
        """Redraw when due; show a failure in the view instead of raising."""
        try:
            self._refresh(force)
        except Exception as err:  # the view thread must go on
            self.note.value = (
                f"the gradients view could not be drawn: {html.escape(type(err).__name__)}: "
                f"{html.escape(str(err))}"
            )

    def _refresh(self, force: bool) -> None:
        trainer = self.panel.trainer
        table = trainer.history.gradients
        findings = trainer.findings
        if len(findings) != self._shown_findings:
            self._show_findings(findings)
        if table is None:
            self.note.value = html.escape(OFF_TEXT)
            self.image.layout.display = "none"
            return
        self.image.layout.display = None
        drawn = (id(table), len(table))
        now = time.monotonic()
        if not (force or self._pacer.due(now, drawn, None)):
            return
        if self._plot is None:
            self._plot = HealthPlot()
        started = time.monotonic()
        png = self._plot.render(table)
        self._pacer.rendered(time.monotonic() - started)
        self.image.value = png
        self._pacer.drew(now, drawn, None)
        self.note.value = ""

    def _show_findings(self, findings: list) -> None:
        self._shown_findings = len(findings)
        if not findings:
            self.findings.value = "<i>no findings so far</i>"
            return
        newest = findings[-MAX_FINDINGS_SHOWN:]
        more = len(findings) - len(newest)
        items = "".join(f"<li>{html.escape(f.text)}</li>" for f in newest)
        head = f"<b>findings</b> ({len(findings)}{f', the newest {len(newest)}' if more else ''})"
        self.findings.value = f"{head}<ul>{items}</ul>"
