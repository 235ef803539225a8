"""What every registration back-end returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class RegistrationResult:
    """Full affine output -> raw (pre-alignment included) and back-end metrics."""

    affine: np.ndarray
    metrics: dict[str, Any] = field(default_factory=dict)
