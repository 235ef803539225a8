"""The stop that keeps a run of fallbacks from passing as an aligned stack."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .pipeline.records import SliceResult


class RunError(RuntimeError):
    """The run stopped on a result it must not hand over as aligned data (the message says why)."""


@dataclass
class FallbackWatch:
    """Stops a pass as soon as more than ``limit`` of the non-blank slices have fallen back.

    A registration may fail on a few slices (too little texture, a template with no
    overlap); when many do, the cause is almost always the setup (wrong parameters, a
    broken back-end, a pre-alignment off by far), and the output would be a stack of
    pre-aligned slices labelled as aligned.
    """

    limit: float
    total: int
    backend: str
    pass_index: int
    reasons: dict[str, int] = field(default_factory=dict)

    def add(self, entry: SliceResult) -> None:
        """Count one slice's result; raises :class:`RunError` once too many have fallen back."""
        if entry.status != "fallback":
            return
        reason = str(entry.metrics.get("reason", "unknown"))
        key = reason.split(" (")[0][:120]
        self.reasons[key] = self.reasons.get(key, 0) + 1
        count = sum(self.reasons.values())
        if self.limit < 1.0 and count > self.limit * self.total:
            top = sorted(self.reasons.items(), key=lambda kv: -kv[1])[:3]
            raise RunError(
                f"pass {self.pass_index}: {count} of {self.total} non-blank slices fell back to the pre-alignment "
                f"(more than register.max_fallback_fraction = {self.limit:g}); most common reasons: "
                + "; ".join(f"{v} x '{k}'" for k, v in top)
                + f". Likely cause: {_likely_cause(top[0][0], self.backend)} To accept a run with this many "
                "fallbacks, set register.max_fallback_fraction: 1.0 in the config.")


def _likely_cause(reason: str, backend: str) -> str:
    if reason.startswith("registration failed"):
        return f"the {backend} back-end's parameters (register.{backend}) or its installation."
    if "template covers" in reason or "no overlap" in reason:
        return "a pre-alignment that places slices far apart (check the ROI / --prealign method)."
    if "non-finite" in reason:
        return "NaN/inf pixels in the input (a conversion problem)."
    if "resemble" in reason or "similarity" in reason:
        return "slices that do not resemble their templates: a wrong pre-alignment, or --median-radius too large."
    return "the registration checks (register.max_scale_change, max_shear, max_shift_px) reject most corrections."
