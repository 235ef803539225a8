"""Slice depths from the images (``amst zspacing``, ``--z-spacing``) and output on an even z grid.

- :mod:`~amst.zspacing.similarity`: in-plane falloff and between-slice similarity.
- :mod:`~amst.zspacing.solve`: the robust joint solve of depths from pair distances.
- :mod:`~amst.zspacing.estimate`: a stack's depths, with the model and its calibration.
- :mod:`~amst.zspacing.grid`: where the slices of an even z grid fall between the aligned slices.
"""

from .estimate import ZSpacing, ZSpacingParams, estimate_depths

__all__ = ["ZSpacing", "ZSpacingParams", "estimate_depths"]
