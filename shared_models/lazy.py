"""Package attributes that load on first use (PEP 562), so importing one submodule of a package does not import
everything its ``__init__`` re-exports."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, where: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` serving each name from its submodule ``where[name]``."""
    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(f"{package}.{where[name]}")
        value = getattr(module, name)
        setattr(importlib.import_module(package), name, value)
        return value
    return __getattr__
