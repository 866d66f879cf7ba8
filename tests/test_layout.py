"""The house rules, checked: packaging, import direction, a light `import hanlin`.

The rules come from the design map kept beside the repository (../shared/DESIGN.md, "Layout" and its arrows
``kernels <- runtimes <- plugins``, ``sdk`` reaching plugins only through the plugin manager); each test states the
rule it checks, so this file stands on its own in a clone without that map."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"hanlin": "sdk", "hanlin.plugins": "plugins", "hanlin.runtimes": "runtimes", "hanlin.kernels": "kernels"}


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_package_folder_is_listed_in_pyproject() -> None:
    setuptools = _pyproject()["tool"]["setuptools"]
    assert setuptools["package-dir"] == FOLDERS
    listed = set(setuptools["packages"])
    found = set()
    for prefix, folder in FOLDERS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([prefix, *rel.parts]) if rel.parts else prefix)
    missing = sorted(found - listed)
    assert not missing, f"add these packages to [tool.setuptools] packages in pyproject.toml: {missing}"
    stale = sorted(listed - found)
    assert not stale, f"pyproject.toml lists packages that have no folder: {stale}"


def _imports(folder: str) -> list[tuple[Path, int, str]]:
    out = []
    for path in (ROOT / folder).rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                out += [(path, node.lineno, alias.name) for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                out.append((path, node.lineno, node.module))
    return out


def test_sdk_never_imports_plugins_runtimes_or_kernels() -> None:
    bad = [
        f"{p.relative_to(ROOT)}:{line} imports {name}"
        for p, line, name in _imports("sdk")
        if name.startswith(("hanlin.plugins", "hanlin.runtimes", "hanlin.kernels"))
    ]
    assert not bad, "the sdk must reach plugins through the plugin manager:\n" + "\n".join(bad)


def test_runtimes_never_import_plugins() -> None:
    """Plugins build on runtimes (a finetuner loads a model), never the other way: a runtime that imported a plugin
    would make the runtime depend on a component that can be disabled or missing."""
    bad = [f"{p.relative_to(ROOT)}:{line} imports {name}" for p, line, name in _imports("runtimes")
           if name.startswith("hanlin.plugins")]
    assert not bad, "runtimes must not import plugins:\n" + "\n".join(bad)


def test_kernels_import_nothing_from_hanlin() -> None:
    bad = [f"{p}:{line} {name}" for p, line, name in _imports("kernels") if name.startswith("hanlin") and not name.startswith("hanlin.kernels")]
    assert not bad, bad


def test_no_bare_folder_imports() -> None:
    bad = []
    for folder in FOLDERS.values():
        bad += [f"{p}:{line} {name}" for p, line, name in _imports(folder) if name.split(".")[0] in set(FOLDERS.values())]
    assert not bad, bad


def test_import_hanlin_loads_no_heavy_library() -> None:
    heavy = ["torch", "transformers", "llama_cpp", "jupyter_client", "ddgs", "langchain_core", "fastapi", "numpy", "typer", "rich"]
    code = "import sys, hanlin; hanlin.get_plugin_manager().infos(); print([m for m in %r if m in sys.modules])" % heavy
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", f"`import hanlin` plus plugin registration imported heavy modules: {out}"


def test_public_api_names_exist() -> None:
    import hanlin

    for name in hanlin.__all__:
        assert hasattr(hanlin, name), name
    for name in ["hookimpl", "tool", "Tool", "load_tool", "load_model", "Agent", "ScriptedModel", "Message", "HanlinError"]:
        assert name in hanlin.__all__
