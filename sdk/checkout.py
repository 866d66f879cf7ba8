"""Keep a source checkout's top-level folders from shadowing PyPI packages of the same name.

The repository keeps ``hanlin.kernels`` in a top-level ``kernels/`` folder. When the checkout root is on
``sys.path`` (pytest puts it there for the ``tests`` package; so does ``python -m``/``python -c`` run from the
root), ``import kernels`` finds that folder instead of the PyPI package ``kernels``, which transformers (5.2x and
later) imports at load time, and every transformers model then fails with an ImportError about a name that has
nothing to do with hanlin. A finder placed first on ``sys.meta_path`` answers for those top-level names only,
looking everywhere on ``sys.path`` except the checkout root. Installed wheels have no such folders, so this does
nothing there.
"""

from __future__ import annotations

import importlib.machinery
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

_ROOT = Path(__file__).resolve().parent.parent
SHADOWING = ("kernels",)  # top-level folders of the checkout that are also names of packages on PyPI


class _SkipCheckoutRoot:  # a meta path finder (the protocol needs only find_spec)
    def find_spec(self, fullname: str, path: Any = None, target: ModuleType | None = None) -> Any:
        if fullname not in SHADOWING:
            return None
        elsewhere = [p for p in sys.path if _resolve(p) != _ROOT]
        spec = importlib.machinery.PathFinder.find_spec(fullname, elsewhere)
        # Nothing installed by that name: say "not found" rather than hand out the checkout's folder.
        return spec if spec is not None else _missing(fullname)


def _missing(fullname: str) -> None:
    raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)


def _resolve(entry: str) -> Path | None:
    try:
        return Path(entry or ".").resolve()
    except (OSError, RuntimeError):
        return None


def install() -> None:
    """Add the finder once, and only in a source checkout (sdk/ beside kernels/)."""
    if not (_ROOT / "sdk" / "checkout.py").is_file() or not (_ROOT / "kernels" / "__init__.py").is_file():
        return
    if any(isinstance(f, _SkipCheckoutRoot) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _SkipCheckoutRoot())
