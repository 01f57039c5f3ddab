"""The README's quick start, pasted cell by cell into one real ipykernel, shows the values
the README claims: 8.0, 2.0, the seed's SGD step (0.116900004, 0.023920001), %grad's 8.0
and the None diagnosis."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

README = Path(__file__).resolve().parent.parent / "README.md"
# What the test adds after the README's own cells, to read the values a user would print.
PROBE = "print('values:', a.numpy(), b.numpy(), float(g))"


def quick_start_blocks() -> list[str]:
    """The ```python blocks of the quick start section (up to the next `## ` heading),
    in order."""
    text = README.read_text()
    start = text.index("## Quick start")
    end = text.index("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start:end], flags=re.S)


def claimed_output(after: str) -> str:
    """The plain ``` block the README shows after the code block containing `after`."""
    text = README.read_text()
    rest = text[text.index(after) :]
    rest = rest[rest.index("```") + 3 :]  # past the end of the code block itself
    return re.search(r"\n```\n(.*?)```", rest, flags=re.S).group(1)


@pytest.fixture(scope="module")
def outputs() -> list[str]:
    """Each quick-start cell's outputs as one text (stdout, errors, text/plain), in one
    kernel, as a user pasting the README would see them."""
    blocks = quick_start_blocks()
    cells = [nbformat.v4.new_code_cell(b.rstrip("\n")) for b in [*blocks, PROBE]]
    nb = nbformat.v4.new_notebook(cells=cells)
    client = NotebookClient(nb, timeout=300, kernel_name="python3", allow_errors=True)
    client.execute()
    texts = []
    for cell in nb.cells:
        parts = []
        for out in cell.outputs:
            if out.output_type == "stream":
                parts.append(out.text)
            elif out.output_type == "error":
                parts.append(f"{out.ename}: {out.evalue}")
            else:
                parts.append(out.get("data", {}).get("text/plain", ""))
        texts.append("\n".join(parts))
    return texts


def cell_output(outputs: list[str], source_start: str) -> str:
    for block, out in zip(quick_start_blocks(), outputs, strict=False):
        if block.startswith(source_start):
            return out
    raise AssertionError(f"the quick start has no block starting with {source_start!r}")


def test_the_quick_start_is_what_the_test_runs():
    blocks = quick_start_blocks()
    assert blocks[0].startswith("%load_ext tapemagic")
    assert any(b.startswith("%%tape --persistent") for b in blocks)
    assert any("import numpy as np" in b for b in blocks)  # the None example's import


def test_no_cell_fails(outputs):
    failed = [out for out in outputs if "Error" in out or "Traceback" in out]
    assert not failed, failed


def test_first_and_second_derivative(outputs):
    first = cell_output(outputs, "%%tape\ny = x ** 2")
    assert "∂y/∂x" in first and "x = 4.0" in first and "8.0" in first
    second = cell_output(outputs, "%%tape -o 2")
    assert "∂²y/∂x²" in second and "2.0" in second
    assert "numpy=2.0" in cell_output(outputs, '_tape.gradient("y", "x", order=2)')


def test_the_seed_sgd_step_and_its_two_rows(outputs):
    table = cell_output(outputs, "%%tape --persistent")
    rows = [line.split()[0] for line in table.splitlines() if line.startswith("∂")]
    assert rows == ["∂loss/∂a", "∂loss/∂b"]  # as the README says: two rows
    assert "-116.9" in table and "-23.92" in table
    assert "values: 0.116900004 0.023920001 8.0" in outputs[-1]


def test_grad_with_a_trailing_comment(outputs):
    out = cell_output(outputs, "g = %grad x**2 --at x=4")
    assert "UsageError" not in out and "∂(x**2)/∂x" in out


def test_the_none_diagnosis(outputs):
    out = cell_output(outputs, "%%tape\ny = tf.constant(np.square(x.numpy()))")
    claimed = claimed_output("y = tf.constant(np.square(x.numpy()))")
    assert claimed.startswith("∂y/∂x  None")
    assert "∂y/∂x" in out and "None" in out
    # the README's why, line for line (it wraps at its own width)
    why = " ".join(claimed.split("↳ why:", 1)[1].split())
    assert why in " ".join(out.split())
