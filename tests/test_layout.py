"""The package layout holds (README's map): shared_models/ is framework-free; server/ and client/ never import each
other; only consortium/ (the harness) knows every side; no module string or path of client/ or dashboards/ in
server/. Read from the source with ast, imports inside functions included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FORBIDDEN = {  # package -> top-level modules it must never import
    "shared_models": {"flwr", "sqlalchemy", "pydicom", "streamlit", "server", "client", "consortium", "dashboards"},
    "server": {"client", "consortium", "dashboards", "pydicom", "streamlit"},
    "client": {"server", "consortium", "dashboards", "sqlalchemy", "streamlit"},
    "dashboards": {"client", "consortium", "flwr"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


def _modules(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_package_imports_what_its_side_must_not_know(package):
    bad = {f"{p.relative_to(REPO)} imports {sorted(_imports(p) & FORBIDDEN[package])}"
           for p in _modules(package) if _imports(p) & FORBIDDEN[package]}
    assert not bad, "\n".join(sorted(bad))


def test_server_holds_no_module_string_or_path_of_the_other_sides():
    """Loading the ClientApp or the dashboard by name is the harness's job (consortium/), not the coordinator's."""
    bad = []
    for p in _modules("server"):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and (
                    node.value.startswith(("client.", "dashboards.", "consortium.")) or "dashboards/" in node.value
                    or node.value.startswith("client/")) and "\n" not in node.value and " " not in node.value:
                bad.append(f"{p.relative_to(REPO)}:{node.lineno} {node.value!r}")
    assert not bad, "\n".join(bad)


def test_the_checker_sees_an_import_inside_a_function(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from client.index import prepare_site\n    import flwr.app\n")
    assert _imports(probe) == {"client", "flwr"}
