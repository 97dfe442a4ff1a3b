"""Out-of-distribution score: Mahalanobis distance on penultimate features (Lee et al., NeurIPS 2018).

"A simple unified framework for detecting out-of-distribution samples and adversarial attacks":
class-conditional Gaussians with class means ``mu_c`` and one shared covariance ``Sigma`` fitted on
the **training** images' penultimate features (here: the backbone's global-average-pooled features,
``float32 (N, D)``, D = 1280 for MobileNetV2); the score of an image is the smallest squared
Mahalanobis distance ``min_c (f - mu_c)^T Sigma^-1 (f - mu_c)``. Higher = less like the training images.
The covariance is shrunk (Ledoit-Wolf, scikit-learn) so its inverse is stable with D = 1280.

In the served graph the distance is computed as ``||f L - mu_c L||^2`` with ``Sigma^-1 = L L^T``
(Cholesky), so only ``L`` (D x D) and ``mu_c L`` (K x D) travel into the ONNX file. Members of an
ensemble each carry their own detector; each member's distance is divided by its own threshold (the
95th percentile on its held-out fold) and the ensemble score is the mean of these ratios: an image is
flagged when the score is above 1.0. Negatives (non-dermoscopic images) are never used for fitting.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class MahalanobisDetector:
    """Fitted parameters of one member's detector.

    Attributes:
        chol: ``float32 (D, D)``: lower-triangular ``L`` with ``Sigma^-1 = L L^T``.
        means_proj: ``float32 (K, D)``: class means multiplied by ``L`` (``mu_c @ L``).
        threshold: squared distance keeping ``keep`` of the member's held-out images (set by
            :meth:`calibrate`; NaN before).
        keep: share of held-out dermoscopic images below ``threshold`` (0.95).
    """

    chol: np.ndarray
    means_proj: np.ndarray
    threshold: float = float("nan")
    keep: float = 0.95

    @classmethod
    def fit(cls, features: np.ndarray, labels: np.ndarray, n_classes: int) -> MahalanobisDetector:
        """Fit class means and the shrunk shared covariance on training features.

        Args:
            features: ``float (N, D)`` penultimate features of training images (no augmentation).
            labels: ``int (N,)`` class indices.
            n_classes: K.

        Raises:
            ValueError: a class without images.
        """
        from sklearn.covariance import LedoitWolf

        f = features.astype(np.float64)
        means = np.stack([f[labels == c].mean(axis=0) if (labels == c).any() else np.full(f.shape[1], np.nan)
                          for c in range(n_classes)])
        if np.isnan(means).any():
            raise ValueError("every class needs training images to fit its mean")
        centred = f - means[labels]
        cov = LedoitWolf(assume_centered=True).fit(centred).covariance_
        precision = np.linalg.inv(cov)
        precision = (precision + precision.T) / 2
        chol = np.linalg.cholesky(precision)
        return cls(chol=chol.astype(np.float32), means_proj=(means @ chol).astype(np.float32))

    def distance(self, features: np.ndarray) -> np.ndarray:
        """Smallest squared Mahalanobis distance to a class mean: float32 ``(N,)``."""
        g = features.astype(np.float64) @ self.chol.astype(np.float64)
        d = ((g[:, None, :] - self.means_proj[None].astype(np.float64)) ** 2).sum(axis=2)
        return d.min(axis=1).astype(np.float32)

    def calibrate(self, held_out_features: np.ndarray, keep: float = 0.95) -> float:
        """Set :attr:`threshold` to the ``keep`` quantile of held-out (validation) distances."""
        self.keep = keep
        self.threshold = float(np.quantile(self.distance(held_out_features), keep))
        return self.threshold

    def ratio(self, features: np.ndarray) -> np.ndarray:
        """``distance / threshold``: float32 ``(N,)``; above 1 = outside the member's 95 % region."""
        return (self.distance(features) / self.threshold).astype(np.float32)


def ensemble_ood_score(detectors: list[MahalanobisDetector], member_features: list[np.ndarray]) -> np.ndarray:
    """Mean over members of :meth:`MahalanobisDetector.ratio`: float32 ``(N,)``; flagged when > 1."""
    return np.mean([d.ratio(f) for d, f in zip(detectors, member_features)], axis=0).astype(np.float32)


def energy_score(logits: np.ndarray) -> np.ndarray:
    """Negative free energy ``-logsumexp(logits)`` (Liu et al., NeurIPS 2020): float ``(N,)``, higher =
    less like the training images. Reported for comparison."""
    from scipy.special import logsumexp

    return -logsumexp(logits.astype(np.float64), axis=1)
