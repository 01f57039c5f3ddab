"""A widget view shown with a static snapshot beside it: what a saved notebook keeps.

Live frontends prefer the widget view; viewers without a kernel (nbconvert, nbviewer,
GitHub) show the plot as a PNG and a one-line summary instead of `VBox(children=(...`.
The display handles are kept so that the snapshot can be brought up to date when a run
ends. Shared by the training panel, the compare panel and the live view.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import ipywidgets as w


def bundle(widget: w.Widget, summary: str, png: bytes, **kwargs: Any) -> dict:
    """The widget view, its one-line summary as text/plain, and the plot as image/png."""
    data = dict(widget._repr_mimebundle_(**kwargs) or {})
    data["text/plain"] = summary
    if png:
        data["image/png"] = base64.b64encode(png).decode("ascii")
    return data


class Snapshots:
    """The display handles a view was shown through."""

    def __init__(self) -> None:
        self._handles: list = []

    def show(self, data: dict) -> None:
        """Display `data` in the running cell, through a handle kept for `publish`."""
        from IPython.display import display

        handle = display(data, raw=True, display_id=True)
        if handle is not None:
            self._handles.append(handle)

    def publish(self, make: Callable[[], dict]) -> None:
        """Update every shown copy with `make()` (made only when something was shown)."""
        if not self._handles:
            return
        data = make()
        for handle in list(self._handles):
            try:
                handle.update(data, raw=True)
            except Exception:  # a closed kernel channel must not break training or a reset
                self._handles.remove(handle)
