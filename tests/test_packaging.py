"""What pyproject.toml declares agrees with the package: one version, every import declared,
the license shipped."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import re
import sys
from pathlib import Path

import pytest

import tapemagic

ROOT = Path(__file__).resolve().parent.parent
tomllib = pytest.importorskip("tomllib")  # Python 3.11+; 3.10 skips the pyproject checks
# Imported lazily, only by History.to_pandas(), which says how to install it when missing.
OPTIONAL = {"pandas"}


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_installed_version_is_the_one_in_the_package():
    assert importlib.metadata.version("tapemagic") == tapemagic.__version__


def test_version_is_written_once():
    project = pyproject()["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert pyproject()["tool"]["hatch"]["version"]["path"] == "tapemagic/__init__.py"
    source = (ROOT / "tapemagic/__init__.py").read_text()
    assert re.search(r'^__version__ = "\d+\.\d+\.\d+"$', source, re.M)


def imported_top_level_modules() -> set[str]:
    names = set()
    for path in (ROOT / "tapemagic").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"tapemagic", "__future__"}


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_imported_package_is_a_declared_dependency():
    declared = {
        normalized(re.match(r"[A-Za-z0-9._-]+", req).group())
        for req in pyproject()["project"]["dependencies"]
    }
    distributions = importlib.metadata.packages_distributions()
    missing = {}
    for module in sorted(imported_top_level_modules() - OPTIONAL):
        dists = {normalized(d) for d in distributions.get(module, [module])}
        if not dists & declared:
            missing[module] = sorted(dists)
    assert missing == {}, f"imported by tapemagic/ but not in [project] dependencies: {missing}"
    assert {"numpy", "keras", "tensorflow"} <= declared


def test_the_declared_license_ships():
    assert pyproject()["project"]["license"] == "MIT"
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Copyright (c) 2026 the tapemagic authors" in text


LAB_OVERRIDES = "share/jupyter/lab/settings/overrides.d"
SAVE_WIDGET_STATE = {"@jupyter-widgets/jupyterlab-manager:plugin": {"saveState": True}}


def test_the_jupyterlab_settings_default_ships_and_is_read():
    """The wheel installs overrides.d/tapemagic.json into JupyterLab's app settings directory,
    where jupyterlab_server merges it under the user's settings: widget state is saved."""
    shared = pyproject()["tool"]["hatch"]["build"]["targets"]["wheel"]["shared-data"]
    source = next(src for src, dest in shared.items() if dest == LAB_OVERRIDES)
    shipped = ROOT / source / "tapemagic.json"
    assert json.loads(shipped.read_text()) == SAVE_WIDGET_STATE
    # Installed (pip copies shared data at install time, also for an editable install).
    from jupyterlab.commands import get_app_dir
    from jupyterlab_server.settings_utils import _get_overrides  # what the settings API calls

    installed = Path(sys.prefix) / LAB_OVERRIDES / "tapemagic.json"
    assert installed.read_text() == shipped.read_text(), "reinstall: pip install -e '.[test]'"
    overrides, error = _get_overrides(str(Path(get_app_dir()) / "settings"))
    assert error == ""
    assert overrides.get("@jupyter-widgets/jupyterlab-manager:plugin", {}).get("saveState") is True
