"""amst: Alignment to Median Smoothed Template for FIB-SEM image stacks."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("amst")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"


def align(*args, **kwargs):
    """Align a stack with AMST; see :func:`amst.pipeline.align`."""
    from .pipeline import align as _align

    return _align(*args, **kwargs)


def apply(*args, **kwargs):
    """Re-apply saved transforms; see :func:`amst.pipeline.apply`."""
    from .pipeline import apply as _apply

    return _apply(*args, **kwargs)


__all__ = ["align", "apply", "__version__"]
