"""FD-digits: Fréchet distance between classifier features of generated digits and held-out real digits.

The FID recipe with the digit classifier's 64-d penultimate layer in place of Inception:
``FD = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1^1/2 S2 S1^1/2)^1/2)``, in float64. The matrix square
roots come from eigendecompositions of symmetric matrices (scipy is not a dependency): S1^1/2 from
``eigh(S1)`` and ``tr((S1^1/2 S2 S1^1/2)^1/2)`` as the sum of square roots of the eigenvalues of that
symmetric PSD product, with round-off negatives clipped to 0.

Interval: FD is biased upward at finite n (resampling with replacement, as a bootstrap does, inflates it
further: the bootstrap distribution sits above the estimate). So the interval is the estimate plus or minus
1.96 bootstrap standard deviations (both sets resampled): it describes sampling variability at this n,
not the bias. Compare settings only at equal sample counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from headhunter.search.stats import Estimate

from .classifier import DigitClassifier, load_classifier
from .data import load_split, to_unit


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix (negative round-off eigenvalues clipped)."""
    vals, vecs = np.linalg.eigh((matrix + matrix.T) / 2.0)
    return (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """Fréchet distance between the Gaussians N(mu1, cov1) and N(mu2, cov2), in float64."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    root1 = _sqrt_psd(cov1)
    middle = root1 @ cov2 @ root1
    vals = np.linalg.eigvalsh((middle + middle.T) / 2.0)
    cross = np.sqrt(np.clip(vals, 0.0, None)).sum()
    diff = mu1 - mu2
    return float(max(0.0, diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * cross))


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of features [N, D], in float64."""
    feats = np.asarray(features, np.float64)
    if feats.ndim != 2 or feats.shape[0] < 2:
        raise ValueError(f"features must be [N >= 2, D]; got shape {feats.shape}")
    return feats.mean(axis=0), np.cov(feats, rowvar=False)


def fd_features(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Fréchet distance between two feature sets [N, D] and [M, D]."""
    return frechet_distance(*feature_stats(feats_a), *feature_stats(feats_b))


def fd_bootstrap(feats_gen: np.ndarray, feats_ref: np.ndarray, n_boot: int = 200, seed: int = 0) -> Estimate:
    """FD of the full sets with a 95 % interval: estimate +- 1.96 sd over bootstraps of both sets (low clipped
    at 0); `n` is the number of generated samples."""
    rng = np.random.default_rng(seed)
    feats_gen, feats_ref = np.asarray(feats_gen, np.float64), np.asarray(feats_ref, np.float64)
    boots = [fd_features(feats_gen[rng.integers(0, len(feats_gen), len(feats_gen))],
                         feats_ref[rng.integers(0, len(feats_ref), len(feats_ref))]) for _ in range(n_boot)]
    fd, sd = fd_features(feats_gen, feats_ref), float(np.std(boots, ddof=1))
    return Estimate(fd, max(0.0, fd - 1.96 * sd), fd + 1.96 * sd, len(feats_gen))


@torch.no_grad()
def classifier_features(images: torch.Tensor | Sequence[Any], classifier: DigitClassifier | None = None,
                        batch_size: int = 500) -> np.ndarray:
    """Penultimate classifier features [N, 64] (float64) of images in [0, 1]."""
    classifier = classifier or load_classifier()
    chunks = [classifier.features(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
    return torch.cat(chunks).double().cpu().numpy()


def heldout_features(classifier: DigitClassifier | None = None) -> np.ndarray:
    """Features of the 300 held-out real digits: the reference set of FD-digits."""
    images, _ = load_split("heldout")
    return classifier_features(to_unit(images), classifier)


def fd_digits(images: torch.Tensor | Sequence[Any], classifier: DigitClassifier | None = None,
              n_boot: int = 200, seed: int = 0) -> Estimate:
    """FD-digits of generated images (in [0, 1]) against the held-out real digits, with a 95 % interval."""
    classifier = classifier or load_classifier()
    return fd_bootstrap(classifier_features(images, classifier), heldout_features(classifier), n_boot, seed)
