"""The engine's layering, checked on every run: no import cycle between modules of ``core/`` (function-level
imports included, with the shared tool the team uses) and no ``streamlit`` anywhere in ``core/`` (the engine
never knows the screen)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT.parent / "shared" / "tools" / "import_cycles.py"


def test_no_import_cycles_in_core():
    assert TOOL.is_file(), f"{TOOL} is missing (it comes with ../shared)"
    out = subprocess.run([sys.executable, str(TOOL), str(ROOT), "core"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_core_never_imports_streamlit():
    offenders = []
    for f in sorted((ROOT / "core").rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{f.relative_to(ROOT)}:{node.lineno}" for n in names if n.split(".")[0] == "streamlit"]
    assert not offenders, offenders


def test_pages_reach_core_only_through_the_workbench():
    """Pages and their helpers are thin: they call ``core.workbench`` (the one door, which also hands out the GAIN
    and experiment services) and show ``core.errors``' messages; nothing else of the engine."""
    allowed = {"core.workbench", "core.errors"}
    offenders = []
    for f in sorted([ROOT / "app.py", *(ROOT / "app_pages").glob("*.py"), *(ROOT / "ui").glob("*.py")]):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "core":
                mods = [f"{node.module}.{a.name}" if node.module == "core" else node.module for a in node.names]
            elif isinstance(node, ast.Import):
                mods = [a.name for a in node.names if a.name.split(".")[0] == "core"]
            else:
                continue
            offenders += [f"{f.relative_to(ROOT)}:{node.lineno} {m}" for m in mods if m not in allowed]
    assert not offenders, offenders
