"""The demo notebooks, executed top to bottom in a real ipykernel of this environment.

Each notebook runs once per session (a fresh kernel); the tests then read its outputs
as a user would see them: the numbers, the derivative tables, the diagnoses.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def execute(name: str) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute()
    return nb


def output_of(nb, source_start: str, mime: str = "text/plain") -> str:
    """Everything the first code cell starting with `source_start` showed, as one string."""
    for cell in nb.cells:
        if cell.cell_type == "code" and cell.source.startswith(source_start):
            parts = []
            for out in cell.outputs:
                if out.output_type == "stream" and out.name == "stdout":
                    parts.append(out.text)
                elif "data" in out:
                    parts.append(out.data.get(mime, ""))
            return "\n".join(parts)
    raise AssertionError(f"no cell starts with {source_start!r}")


@pytest.fixture(scope="module")
def basics():
    return execute("01_tape_basics.ipynb")


def test_basics_first_and_second_derivative(basics):
    html = output_of(basics, "%%tape\ny = x ** 2", "text/html")
    assert "∂y/∂x" in html and "8.0" in html and "x = 4.0" in html
    assert "numpy=8.0" in output_of(basics, '_tape.gradient("y", "x")')
    second = output_of(basics, "%%tape -o 2")
    assert "∂²y/∂x²" in second and "2.0" in second
    assert "numpy=2.0" in output_of(basics, '_tape.gradient("y", "x", order=2)')


def test_basics_persistent_tape_sgd_step(basics):
    table = output_of(basics, "%%tape --persistent")
    assert [line.split()[0] for line in table.splitlines() if line.startswith("∂")] == [
        "∂loss/∂a",
        "∂loss/∂b",
    ]  # the defaults: the loss with respect to the Variables, no data
    assert "0.116900004 0.023920001" in output_of(basics, "learning_rate = 0.001")


def test_basics_grad_returns_a_value(basics):
    assert "tf.Tensor(8.0, shape=(), dtype=float32)" in output_of(basics, "g = %grad")
    both = output_of(basics, "du, dv = %grad")  # cos(0.5) * 2 and sin(0.5)
    assert "1.7551651" in both and "0.47942555" in both


def test_basics_jacobian_hessian_check_plot(basics):
    jacobian = output_of(basics, "%%tape --jacobian")  # y = w ** 2 at w = [1, 2, 3]
    assert "J(y; w)" in jacobian
    assert "[[2., 0., 0.]," in jacobian and "[0., 4., 0.]," in jacobian
    assert "[0., 0., 6.]]" in jacobian
    hessian = output_of(basics, "%%tape --hessian")  # f = w . A w: H = A + A^T
    assert "H(f; w)" in hessian
    assert "[[2., 2., 1.]," in hessian and "[2., 2., 0.]," in hessian
    assert "[1., 0., 6.]]" in hessian
    assert "check ok" in output_of(basics, "%%tape --check")
    assert "data:image/png;base64," in output_of(basics, "%%tape --plot", "text/html")


def test_basics_diagnoses(basics):
    assert "no tape watches a constant" in output_of(basics, "%%tape\nx0 = ")
    fixed = output_of(basics, "%%tape -w x0")  # the fix the diagnosis names
    assert "∂y/∂x0" in fixed and "6.0" in fixed
    assert "n is an integer Variable (int32)" in output_of(basics, "%%tape\ny = n * n")
    assert "np.square(x.numpy()) leaves TensorFlow" in output_of(
        basics, 'print(_tape.why("y", "x"))'
    )


@pytest.fixture(scope="module")
def training():
    return execute("02_training_panel.ipynb")


def test_training_seed_sgd_table(training):
    out = output_of(training, "history = panel.run(6)")
    for loss in ("19.457", "8.134604", "4.186867", "2.810262", "2.330071", "2.162411"):
        assert f"loss {loss}" in out
    assert "epoch 5: loss 2.162411   Y = 0.2729075 X + 0.05813503" in out


def test_training_panels_are_widgets(training):
    for start in ("X = tf.constant", "%train", "w = tf.Variable", "rng = "):
        mimes = [o.get("data", {}) for c in training.cells if c.source.startswith(start)
                 for o in c.get("outputs", [])]  # fmt: skip
        assert any("application/vnd.jupyter.widget-view+json" in m for m in mimes), start


def test_training_adam_own_step_mlp_resume_and_device(training):
    assert "[19.457001, 10.991247, 5.402445, 2.563472, 2.054192]" in output_of(
        training, "history = _panel.run(5)"
    )
    assert "0.22655392 0.0470237" in output_of(training, "step_panel.run(3)")
    assert "after 4 epochs: loss" in output_of(training, "history = mlp_panel.run(4)")
    resumed = output_of(training, "resumed = TrainingPanel(")
    assert "resumed at epoch 4 with 4 epochs of history" in resumed and "now at epoch 5" in resumed
    assert "device='GPU:7' is not available" in output_of(training, "try:")


def test_notebooks_are_committed_without_outputs():
    for path in NOTEBOOKS.glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), path


AUTOLOAD = [
    "import sys\np = 3.0\nprint('tensorflow imported:', 'tensorflow' in sys.modules)",
    "%%tape -q -w p\ny = p * p",
    "print(float(_tape.gradient('y', 'p')), 'tensorflow imported:', 'tensorflow' in sys.modules)",
    "g = %grad x**2 --at x=4 -q\nprint(float(g))",
    "%load_ext tapemagic",
    "%%tape -q -w p\ny = p ** 3",
    "print(float(_tape.gradient('y', 'p')))",
]


def run_cells(cells: list[str], env: dict[str, str] | None = None) -> list[str]:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    client = NotebookClient(nb, timeout=120, kernel_name="python3", allow_errors=True)
    saved = dict(os.environ)
    os.environ.update(env or {})
    try:
        client.execute()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return [
        "".join(o.get("text", "") + o.get("ename", "") + o.get("evalue", "") for o in c.outputs)
        for c in nb.cells
    ]


def test_autoload_in_a_fresh_kernel_imports_nothing_until_first_use():
    assert Path(sys.prefix, "etc/ipython/startup/tapemagic_autoload.py").exists()
    outs = run_cells(AUTOLOAD)
    assert "tensorflow imported: False" in outs[0]
    assert "Error" not in outs[1]  # %%tape works without %load_ext
    assert "6.0 tensorflow imported: True" in outs[2]
    assert "8.0" in outs[3]
    assert "Error" not in outs[4] and "27.0" in outs[6]  # %load_ext still works beside it


def test_autoload_can_be_turned_off():
    outs = run_cells(AUTOLOAD[:2], env={"TAPEMAGIC_AUTOLOAD": "0"})
    assert "tensorflow imported: False" in outs[0]
    assert "UsageError" in outs[1] and "tape" in outs[1]
