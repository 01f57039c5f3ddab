"""tapemagic: TensorFlow GradientTape magics and a live training panel for IPython/Jupyter.

`%load_ext tapemagic` registers `%%tape` and `%grad`. Importing the package prints
nothing and imports no TensorFlow: the heavy modules load on first use.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["load_ipython_extension", "unload_ipython_extension"]


def load_ipython_extension(ipython) -> None:
    """Register the magics (`%load_ext tapemagic`)."""
    from tapemagic.magics import register

    register(ipython)


def unload_ipython_extension(ipython) -> None:
    """Remove the magics (`%unload_ext tapemagic`)."""
    from tapemagic.magics import unregister

    unregister(ipython)
