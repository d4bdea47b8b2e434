"""Lazy exports for package `__init__` files: a name's module is imported on its first use.

    from qail_ros.lazy import lazy_exports

    __getattr__, __all__ = lazy_exports(__name__, {
        '.losses': ('qail_loss', 'qbc_loss'),       # module (relative to the package): names
        '.trainer': ('QAILTrainer',),
    })

`import qail_ros.qail` then loads no torch; `qail_ros.qail.QAILTrainer` imports
`qail_ros.qail.trainer` and keeps the value in the package, so the hook runs once per name.
A core module: standard library only.
"""
from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ['lazy_exports']


def lazy_exports(package: str, exports: Mapping[str, Sequence[str]]
                 ) -> tuple[Callable[[str], Any], list[str]]:
    """The module `__getattr__` (PEP 562) of `package` and the exported names, in order.

    `exports` maps a module (absolute, or relative to `package` with a leading dot) to the
    names it gives the package."""
    where = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f'module {package!r} has no attribute {name!r}')
        value = getattr(importlib.import_module(module, package), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__, list(where)
