"""One IPython shell for the whole session: TensorFlow costs seconds to import."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def shell():
    from IPython.core.interactiveshell import InteractiveShell

    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "tapemagic")
    ip.run_cell("import numpy as np\nimport tensorflow as tf")
    return ip


@pytest.fixture
def ip(shell):
    """The shared shell with a namespace cleaned of what the last test bound."""
    before = set(shell.user_ns)
    yield shell
    for name in set(shell.user_ns) - before:
        del shell.user_ns[name]


def run(ip, cell: str):
    """Run a cell; fail the test with the cell's own error if it raised."""
    result = ip.run_cell(cell)
    if not result.success:
        raise AssertionError(f"cell failed: {result.error_in_exec or result.error_before_exec}")
    return result


@pytest.fixture(scope="session")
def lab():
    """One JupyterLab server for every browser test (on a copy of the notebooks)."""
    from browser_support import jupyterlab

    with jupyterlab() as server:
        yield server


@pytest.fixture(scope="session")
def browser(lab):
    """One headless Chromium for every browser test; each test opens its own pages."""
    from browser_support import chromium

    with chromium(lab) as browser:
        yield browser
