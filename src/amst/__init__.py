"""amst: Alignment to Median Smoothed Template for FIB-SEM image stacks.

``import amst`` stays light: :func:`align` and :func:`apply` are the functions of
:mod:`amst.pipeline` itself (their signatures and docstrings show in ``help``), imported on
first use (PEP 562).
"""

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("amst")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

if TYPE_CHECKING:  # for type checkers and editors; at run time see __getattr__
    from .pipeline import align, apply
    from .point_map import map_points, map_points_inverse

# Public names imported on first access: name -> the submodule that defines it.
_LAZY = {"align": "pipeline", "apply": "pipeline", "map_points": "point_map", "map_points_inverse": "point_map"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["align", "apply", "map_points", "map_points_inverse", "__version__"]
