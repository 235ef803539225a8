"""Pairwise translation from SIFT features (OpenCV) with a translation-only RANSAC."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .pairwise import PairMeasurement, working_image


@dataclass
class FeatureDescriptor:
    points: np.ndarray        # (k, 2) keypoint positions in raw pixels (x, y)
    descriptors: np.ndarray   # (k, 128) float32
    blank: bool


@dataclass
class SiftTranslation:
    """SIFT keypoints on a pyramid level, ratio-test matching, 1-point RANSAC on translations.

    Parameters
    ----------
    max_side : int
        Detect on a downsampled image whose longer side is at most this.
    max_features : int
        Keypoint cap per slice (strongest kept): bounds matching cost.
    sigma : float
        Gaussian pre-blur in working pixels (the paper used 1.6 in Fiji).
    ratio : float
        Lowe's ratio test.
    inlier_px : float
        RANSAC inlier tolerance in raw pixels.
    min_inliers : int
        Fewer inliers is a failed measurement.
    """

    max_side: int = 768
    max_features: int = 1500
    sigma: float = 1.6
    ratio: float = 0.8
    inlier_px: float = 2.0
    min_inliers: int = 12

    def describe(self, image: np.ndarray) -> FeatureDescriptor:
        img, scale, blank = working_image(image, self.max_side)
        if blank:
            return FeatureDescriptor(np.zeros((0, 2)), np.zeros((0, 128), np.float32), True)
        if self.sigma > 0:
            img = cv2.GaussianBlur(img, (0, 0), self.sigma)
        lo, hi = np.percentile(img, [0.5, 99.5])
        img8 = np.clip((img - lo) * (255.0 / max(hi - lo, 1e-6)), 0, 255).astype(np.uint8)
        sift = cv2.SIFT_create(nfeatures=self.max_features)
        kps, desc = sift.detectAndCompute(img8, None)
        if desc is None or not kps:
            return FeatureDescriptor(np.zeros((0, 2)), np.zeros((0, 128), np.float32), False)
        pts = np.array([k.pt for k in kps], dtype=np.float64) / scale
        return FeatureDescriptor(pts, desc.astype(np.float32), False)

    def match(self, a: FeatureDescriptor, b: FeatureDescriptor) -> PairMeasurement:
        """Displacement of content from slice a to slice b (raw px, x y)."""
        if a.blank or b.blank:
            return PairMeasurement(np.zeros(2), 0.0, False, "blank slice")
        if len(a.points) < self.min_inliers or len(b.points) < self.min_inliers:
            return PairMeasurement(np.zeros(2), 0.0, False, "too few keypoints")
        matcher = cv2.BFMatcher(cv2.NORM_L2)
        knn = matcher.knnMatch(a.descriptors, b.descriptors, k=2)
        good = [m[0] for m in knn if len(m) == 2 and m[0].distance < self.ratio * m[1].distance]
        if len(good) < self.min_inliers:
            return PairMeasurement(np.zeros(2), float(len(good)), False, f"{len(good)} matches")
        d = b.points[[m.trainIdx for m in good]] - a.points[[m.queryIdx for m in good]]
        shift, inliers = ransac_translation(d, self.inlier_px)
        ok = inliers.sum() >= self.min_inliers
        return PairMeasurement(shift, float(inliers.sum()), bool(ok), "" if ok else f"{inliers.sum()} inliers")


def ransac_translation(displacements: np.ndarray, tolerance: float, max_candidates: int = 300,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Best translation supported by the displacement vectors of matched points.

    A translation has one degree of freedom per axis, so every match is a hypothesis; we
    score up to ``max_candidates`` of them against all matches (exhaustive when fewer),
    then refine on the inliers with the mean.

    Returns
    -------
    shift : (2,) array
    inliers : (k,) bool array
    """
    d = np.asarray(displacements, dtype=np.float64)
    rng = np.random.default_rng(seed)
    cand = d if len(d) <= max_candidates else d[rng.choice(len(d), max_candidates, replace=False)]
    dist = np.linalg.norm(d[None, :, :] - cand[:, None, :], axis=2)
    counts = (dist < tolerance).sum(axis=1)
    best = cand[int(np.argmax(counts))]
    inliers = np.linalg.norm(d - best, axis=1) < tolerance
    shift = d[inliers].mean(axis=0)
    inliers = np.linalg.norm(d - shift, axis=1) < tolerance
    return d[inliers].mean(axis=0), inliers
