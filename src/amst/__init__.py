"""amst: Alignment to Median Smoothed Template for FIB-SEM image stacks."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("amst")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"
