"""What every registration back-end returns, and the one error it may raise on real data."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


class RegistrationError(RuntimeError):
    """A registration that failed for a reason real data can legitimately cause.

    Back-ends raise it (with a message saying what failed) when the images do not allow a
    solution: too few usable pixels, no overlap, a singular or non-finite system, elastix
    stopping with an error. The caller then keeps the pre-alignment for that slice. Every
    other exception (``TypeError``, ``KeyError``, ...) is a programming error and propagates.
    """


@dataclass
class RegistrationResult:
    """Full affine output -> raw (pre-alignment included) and back-end metrics."""

    affine: np.ndarray
    metrics: dict[str, Any] = field(default_factory=dict)
