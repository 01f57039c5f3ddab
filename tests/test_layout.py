"""The architecture holds: the cores know TensorFlow only, display never reaches up.

Every import in every file is read from its AST, including imports inside functions
(the lazy ones), so a layering break cannot hide behind a deferred import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "tapemagic"
UI = ("IPython", "ipywidgets", "ipykernel", "matplotlib")
# What each layer must never import (module prefixes).
FORBIDDEN = {
    "tape": ("tapemagic.display", "tapemagic.jupyter", "tapemagic.training", *UI),
    "training": ("tapemagic.display", "tapemagic.jupyter", "tapemagic.tape", *UI),
    "display": ("tapemagic.jupyter", "IPython", "ipywidgets", "ipykernel"),
}
# Modules at the top of the package that the cores share: TensorFlow-only too.
SHARED = ("devices.py", "variables.py", "distribute.py", "threads.py")


def imports_of(path: Path, package: str) -> list[str]:
    """Absolute module names imported anywhere in the file (relative ones resolved
    against `package`, the file's own)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            out.append(base)
            out += [f"{base}.{a.name}" for a in node.names]
    return out


def violations(files: list[Path], forbidden: tuple[str, ...], root: Path = PACKAGE) -> list[str]:
    out = []
    for f in files:
        where = f.relative_to(root.parent)
        package = ".".join(where.parts[:-1])
        for name in imports_of(f, package):
            if any(name == p or name.startswith(p + ".") for p in forbidden):
                out.append(f"{where} imports {name}")
    return out


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_nothing_above_it(layer):
    files = sorted((PACKAGE / layer).rglob("*.py"))
    assert files, f"tapemagic/{layer}/ is missing"
    assert violations(files, FORBIDDEN[layer]) == []


def test_shared_core_modules_know_tensorflow_only():
    forbidden = ("tapemagic.display", "tapemagic.jupyter", *UI)
    assert violations([PACKAGE / name for name in SHARED], forbidden) == []


def test_the_check_catches_lazy_and_relative_imports(tmp_path):
    """The scan itself works: imports inside a function and relative ones are seen."""
    fake = tmp_path / "tapemagic" / "tape" / "probe.py"
    fake.parent.mkdir(parents=True)
    fake.write_text(
        "def f():\n    from tapemagic.display import render\n    import matplotlib\n"
        "from ..jupyter import panel\n"
    )
    found = violations([fake], FORBIDDEN["tape"], root=tmp_path / "tapemagic")
    assert found == [
        "tapemagic/tape/probe.py imports tapemagic.jupyter",
        "tapemagic/tape/probe.py imports tapemagic.jupyter.panel",
        "tapemagic/tape/probe.py imports tapemagic.display",
        "tapemagic/tape/probe.py imports tapemagic.display.render",
        "tapemagic/tape/probe.py imports matplotlib",
    ]


def test_every_module_lives_in_a_layer():
    """No new file at the top level slips past the checks above."""
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert top == sorted(["__init__.py", *SHARED])
