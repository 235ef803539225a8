"""What every registration back-end returns, the one error it may raise on real data, and
the :class:`Backend` protocol the pipeline drives back-ends through."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

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


class Backend(Protocol):
    """What the pipeline needs from a registration back-end.

    A back-end may read the template on a pyramid level of the output canvas rather than at
    full resolution (:meth:`template_level`); the pipeline then builds the template, and
    hands the raw slice, on that level (:meth:`level_image`, :meth:`level_shape`). Affines
    in and out stay full-resolution maps, output -> raw.

    :func:`amst.register.backend_for` builds one by name; implementations are
    :class:`amst.register.fast.FastBackend` and
    :class:`amst.register.elastix.ElastixBackend`.

    """

    @property
    def name(self) -> str:
        """The back-end's name as the config spells it (``register.backend``)."""
        ...

    def template_level(self, canvas_shape_yx: tuple[int, int]) -> int:
        """Pyramid level at which the back-end reads the template of this canvas.

        Parameters
        ----------
        canvas_shape_yx : (int, int)
            Output canvas (height, width).

        Returns
        -------
        int
            0 for full resolution; each level has a quarter of the pixels of the one below.

        Raises
        ------
        ValueError
            For parameters the back-end refuses.
        """
        ...

    def level_image(self, image: np.ndarray, level: int) -> np.ndarray:
        """A float32 image brought to pyramid ``level`` exactly as the back-end does it.

        Parameters
        ----------
        image : 2-D float32 array
            At full resolution.
        level : int
            A level :meth:`template_level` may return.

        Returns
        -------
        numpy.ndarray
            ``image`` itself at level 0, else the reduced image.

        Raises
        ------
        ValueError
            For a level the back-end cannot work on, or parameters it refuses.
        """
        ...

    def level_shape(self, shape_yx: tuple[int, int], level: int) -> tuple[int, int]:
        """Shape of pyramid ``level`` of an image of ``shape_yx`` (as :meth:`level_image` makes it).

        Parameters
        ----------
        shape_yx : (int, int)
            Full-resolution (height, width).
        level : int
            A level :meth:`template_level` may return.

        Returns
        -------
        tuple of int
            (height, width) at ``level``.

        Raises
        ------
        ValueError
            For a level the back-end cannot work on.
        """
        ...

    def register(self, raw: np.ndarray, template: np.ndarray, template_mask: np.ndarray | None,
                 initial: np.ndarray, *, level: int) -> RegistrationResult:
        """Affine (output -> raw) of ``raw`` onto ``template``, starting from ``initial``.

        Parameters
        ----------
        raw : 2-D array
            The raw slice, at ``level`` (:meth:`level_image` of it; itself at level 0).
        template : 2-D float array
            On the output canvas at ``level``; masked pixels filled with a neutral value.
        template_mask : 2-D bool array or None
            Usable template pixels; None for all.
        initial : (2, 3) array
            Start (the pre-alignment), in full-resolution pixels.
        level : int
            Pyramid level of ``raw`` and ``template`` (:meth:`template_level`).

        Returns
        -------
        RegistrationResult
            The full-resolution affine and the back-end's metrics.

        Raises
        ------
        RegistrationError
            When the images allow no registration: keep the pre-alignment.
        ValueError
            For a level or parameter the back-end refuses; any other exception is a bug.
        """
        ...

    @property
    def needs_probe(self) -> bool:
        """Whether :meth:`probe` has anything to try (the pipeline skips the round trip otherwise)."""
        ...

    def probe(self) -> None:
        """Check, before a run touches its output, that the back-end can use its parameters.

        Raises
        ------
        ValueError
            Naming the config section and what the back-end said.
        """
        ...
