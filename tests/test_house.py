"""The house rules, checked on the source: the subpackage import graph, where Qt and torch
may be imported, module and function size, and the package list the wheel is built from.

Static checks read the source with :mod:`ast` (every ``import``, also those inside
functions, so a lazy import that breaks a rule is caught too); the torch check imports the
patient's modules in a fresh interpreter and looks at ``sys.modules``.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "livedeid"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
# A def may be longer when the line before it (or its own line) says why.
LONG_FUNCTION_MARK = "# long:"

# Which subpackage may import which (beyond itself). Lazy imports count: a lazy import is
# still a dependency, it only moves its cost. See each subpackage's docstring.
ALLOWED = {
    "core": set(),
    "assets": set(),
    "tracking": {"core"},
    "protect": {"core"},
    "inference": {"core", "assets", "nets"},
    "rppg": {"core", "tracking"},
    "io": {"core", "tracking", "rppg"},
    "recognizers": {"core", "tracking", "nets"},
    "nets": {"core"},
    "pipeline": {"core", "assets", "io", "tracking", "protect", "inference", "rppg"},
    "evaluation": {"core", "assets", "io", "tracking", "protect", "inference", "rppg", "recognizers",
                   "pipeline", "nets"},
    "training": {"core", "assets", "io", "tracking", "protect", "inference", "rppg", "recognizers",
                 "pipeline", "nets", "evaluation"},
    "cloak": {"core", "tracking", "protect", "recognizers", "io", "evaluation"},
    "panel": {"core", "assets", "io", "tracking", "protect", "inference", "rppg", "recognizers",
              "pipeline", "cloak"},
    "batch": {"core", "assets", "io", "tracking", "rppg", "pipeline", "evaluation", "cloak"},
    "cli": {"core", "assets", "io", "tracking", "protect", "inference", "rppg", "recognizers",
            "pipeline", "nets", "training", "evaluation", "panel", "cloak", "batch"},
}
QT_MODULES = ("PySide6", "pyqtgraph", "shiboken6")


def _modules() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts)


def _subpackage(path: Path) -> str | None:
    rel = path.relative_to(PKG).parts
    return rel[0] if len(rel) > 1 else None


def _imports(path: Path) -> list[str]:
    """Every absolute module name ``path`` imports, at any depth of the file."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            # ``from livedeid.x import y`` may import the subpackage livedeid.x.y
            names += [f"{node.module}.{a.name}" for a in node.names]
    return names


def _livedeid_deps(path: Path) -> set[str]:
    deps = set()
    for name in _imports(path):
        parts = name.split(".")
        if parts[0] == "livedeid" and len(parts) > 1 and (PKG / parts[1]).is_dir():
            deps.add(parts[1])
    return deps


def test_every_subpackage_has_a_docstring_saying_what_it_may_import():
    for init in sorted(PKG.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "May import" in doc or "may import" in doc, f"{init.parent.name}: docstring lacks its import rule"
    assert {p.parent.name for p in PKG.glob("*/__init__.py")} == set(ALLOWED)


def test_subpackages_import_only_what_their_rule_allows():
    bad = []
    for path in _modules():
        sub = _subpackage(path)
        if sub is None:
            continue
        for dep in _livedeid_deps(path) - {sub} - ALLOWED[sub]:
            bad.append(f"{path.relative_to(ROOT)} imports livedeid.{dep}")
    assert not bad, "\n".join(bad)


def test_the_subpackage_graph_has_no_cycles():
    graph: dict[str, set[str]] = {sub: set() for sub in ALLOWED}
    for path in _modules():
        sub = _subpackage(path)
        if sub is not None:
            graph[sub] |= _livedeid_deps(path) - {sub}
    done, stack = set(), []

    def visit(node: str) -> None:
        if node in stack:
            raise AssertionError("import cycle: " + " -> ".join([*stack[stack.index(node):], node]))
        if node in done:
            return
        stack.append(node)
        for dep in sorted(graph[node]):
            visit(dep)
        stack.pop()
        done.add(node)

    for sub in sorted(graph):
        visit(sub)


def test_only_the_panel_imports_qt():
    bad = [f"{p.relative_to(ROOT)}: {n}" for p in _modules() if _subpackage(p) != "panel"
           for n in _imports(p) if n.split(".")[0] in QT_MODULES]
    assert not bad, "\n".join(bad)


def test_the_patients_cpu_path_imports_no_torch():
    # Everything `livedeid run/process/demo/doctor` touches on the CPU, and building the
    # CPU pipeline itself; torch (hundreds of MB, seconds to import) stays out.
    code = (
        "import sys\n"
        "import livedeid.cli.main, livedeid.cli.doctor\n"
        "from livedeid.core.settings import PipelineConfig\n"
        "from livedeid.pipeline.factory import build_processor\n"
        "import livedeid.io.sources, livedeid.io.sinks, livedeid.io.synthetic\n"
        "proc = build_processor(PipelineConfig(engine='onnxruntime'))\n"
        "proc.close()\n"
        "heavy = sorted(m for m in ('torch', 'tensorrt', 'PySide6', 'dlib') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"the patient's path imported {out.stdout.strip()}"


def test_no_module_is_over_the_size_limit():
    big = [f"{p.relative_to(ROOT)}: {n}" for p in _modules()
           if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES]
    assert not big, f"modules over {MAX_MODULE_LINES} lines:\n" + "\n".join(big)


def test_no_function_is_over_the_size_limit_unless_it_says_why():
    long = []
    for path in _modules():
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines), str(path))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            length = node.end_lineno - node.lineno + 1
            said_why = any(LONG_FUNCTION_MARK in lines[i - 1] for i in (first - 1, node.lineno) if i >= 1)
            if length > MAX_FUNCTION_LINES and not said_why:
                long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines without a '{LONG_FUNCTION_MARK}' note:\n" \
        + "\n".join(long)


def test_the_wheel_lists_every_subpackage_and_maps_the_asset_folders():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(project["packages"])
    on_disk = {"livedeid"} | {f"livedeid.{p.parent.name}" for p in PKG.glob("*/__init__.py")}
    assert on_disk <= listed, f"missing from pyproject packages: {sorted(on_disk - listed)}"
    mapped = project["package-dir"]
    assert mapped == {"livedeid.assets.engines": "engines", "livedeid.assets.ui": "ui"}
    assert listed - on_disk == set(mapped)


@pytest.mark.parametrize("finder", ["engines_dir", "ui_dir"])
def test_assets_resolve_through_importlib_resources(finder):
    from livedeid import assets

    folder = getattr(assets, finder)()
    expected = {"engines_dir": "deid.json", "ui_dir": "style_dark.qss"}[finder]
    assert (folder / expected).is_file()


def test_caches_go_to_the_users_cache_folder(tmp_path, monkeypatch):
    from livedeid import assets

    monkeypatch.setenv("LIVEDEID_CACHE_DIR", str(tmp_path / "cache"))
    assert assets.cache_dir("trt") == tmp_path / "cache" / "trt"
    assert (tmp_path / "cache" / "trt").is_dir()
    monkeypatch.delenv("LIVEDEID_CACHE_DIR")
    default = assets.cache_dir()
    assert ROOT not in default.parents, "the default cache must not be inside the source tree"
