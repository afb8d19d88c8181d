"""The shape of shared/: small modules with one job each, no private name used across modules,
and imports that go down the flow (the import-linter contracts of pyproject.toml)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from shared import config

PACKAGE = config.REPO_ROOT / "shared"
MODULES = sorted(PACKAGE.rglob("*.py"))
MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = path.relative_to(config.REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


NAMES = {_module_name(p): p for p in MODULES}


def test_no_module_is_over_400_lines():
    long = {p.relative_to(PACKAGE).as_posix(): n for p in MODULES
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these modules (over {MAX_LINES} lines): {long}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_each_module_says_its_job_in_its_first_docstring_line(path):
    doc = ast.get_docstring(ast.parse(path.read_text()))
    if path.name == "__init__.py" and not doc:
        return
    assert doc and doc.splitlines()[0].strip(), f"{path}: no docstring saying its job"


def private_uses(path: Path, own: str | None = None) -> list[str]:
    """``module._name`` uses in ``path`` (module ``own``, by default its name in shared/) of a
    private name of another module of shared/: imported by name, or reached as an attribute of
    an imported module."""
    tree = ast.parse(path.read_text())
    own = own or _module_name(path)
    found, modules = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("shared"):
            for alias in node.names:
                target = f"{node.module}.{alias.name}"
                if target in NAMES:
                    modules[alias.asname or alias.name] = target
                elif alias.name.startswith("_") and node.module != own:
                    found.append(f"{node.module}.{alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("shared") and alias.asname:
                    modules[alias.asname] = alias.name
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in modules and node.attr.startswith("_")
                and not node.attr.startswith("__")):
            found.append(f"{modules[node.value.id]}.{node.attr}")
    return found


def test_no_private_name_is_used_across_modules():
    found = {_module_name(p): uses for p in MODULES if (uses := private_uses(p))}
    assert not found, f"make these public in their home module, or keep them at home: {found}"


def test_the_private_name_check_sees_both_forms(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text('"""Probe."""\nfrom shared.data.images import _WORKERS_X\n'
                     "from shared.data import images\nimages._secret()\n")
    assert private_uses(probe, "shared.data.probe") == ["shared.data.images._WORKERS_X",
                                                        "shared.data.images._secret"]


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("__init__.py")),
                         ids=lambda p: p.parent.relative_to(PACKAGE).as_posix() or "shared")
def test_init_files_re_export_no_private_name(path):
    tree = ast.parse(path.read_text())
    private = [a.asname or a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
               for a in node.names if (a.asname or a.name).startswith("_")]
    assert not private, f"{path}: re-exports private names {private}"


def lint_imports(config_file: Path) -> subprocess.CompletedProcess:
    """import-linter's own command on ``config_file``, run from the repository root."""
    return subprocess.run([str(Path(sys.executable).parent / "lint-imports"), "--no-cache",
                           str(config_file)], cwd=config.REPO_ROOT, capture_output=True, text=True)


def test_imports_keep_to_the_layers_of_pyproject():
    """The import-linter contracts (`make lint` runs the same)."""
    checked = lint_imports(config.REPO_ROOT / "pyproject.toml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "0 broken" in checked.stdout


def test_an_upward_import_breaks_the_layers(tmp_path):
    """The same check with the layers turned upside down must fail: it is not vacuous."""
    text = (config.REPO_ROOT / "pyproject.toml").read_text()
    start = text.index("layers = [\n") + len("layers = [\n")
    end = text.index("]", start)
    layers = text[start:end].splitlines(keepends=True)
    (tmp_path / "pyproject.toml").write_text(text[:start] + "".join(reversed(layers)) + text[end:])
    checked = lint_imports(tmp_path / "pyproject.toml")
    assert checked.returncode != 0 and "BROKEN" in checked.stdout, checked.stdout


def test_the_run_folder_files_are_read_without_tensorflow():
    code = "import sys, shared.results; assert 'tensorflow' not in sys.modules, 'tensorflow'"
    assert subprocess.run([sys.executable, "-c", code], cwd=config.REPO_ROOT).returncode == 0


def test_the_development_page_lists_every_module():
    """docs/development.md has one line per module of shared/: a new module is described there."""
    page = (config.REPO_ROOT / "docs" / "development.md").read_text()
    missing = [p.relative_to(PACKAGE).as_posix() for p in MODULES
               if p.name not in ("__init__.py", "__main__.py") and f" {p.name} " not in page]
    assert not missing, f"describe these modules in docs/development.md: {missing}"
