"""Package attributes that import their module on first use.

Importing ``taskcast``, ``taskcast.tasks`` or ``taskcast.bridge`` must not
import Celery, Redis or the server stack: users import the package in
settings files, web processes and workers that need only one of its parts.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_getattr(package: str, names: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` resolving ``names`` (attribute -> module, relative to
    ``package`` when it starts with a dot) by importing the module when first asked."""

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module, package), name)

    return __getattr__
