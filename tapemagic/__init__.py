"""tapemagic: TensorFlow GradientTape magics and a live training panel for IPython/Jupyter.

`%load_ext tapemagic` registers `%%tape`, `%grad` and `%train`; `tapemagic.Trainer` and
`tapemagic.TrainingPanel` train from scripts and notebooks. Importing the package prints
nothing and imports no TensorFlow: the heavy modules load on first use.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = [
    "History",
    "LivePanel",
    "Trainer",
    "TrainingPanel",
    "compare",
    "live",
    "load_ipython_extension",
    "unload_ipython_extension",
]

# Loaded on first access, so that `import tapemagic` imports no TensorFlow.
_LAZY = {
    "Trainer": "tapemagic.training.trainer",
    "History": "tapemagic.training.history",
    "TrainingPanel": "tapemagic.jupyter.panel",
    "LivePanel": "tapemagic.jupyter.live",
    "live": "tapemagic.jupyter.live",
    "compare": "tapemagic.jupyter.compare_panel",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tapemagic' has no attribute {name!r}")


def load_ipython_extension(ipython) -> None:
    """Register the magics (`%load_ext tapemagic`)."""
    from tapemagic.jupyter.magics import register

    register(ipython)


def unload_ipython_extension(ipython) -> None:
    """Remove the magics (`%unload_ext tapemagic`)."""
    from tapemagic.jupyter.magics import unregister

    unregister(ipython)
