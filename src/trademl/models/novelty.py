"""Novelty: how unlike its training inputs a request's features are (FreqAI's Dissimilarity Index).

A model trained on one market and one volatility regime says nothing reliable about another:
its probabilities are extrapolations. Each LightGBM model stores a compact description of the
feature rows it trained on (``novelty.npz``): a robust centre and scale per feature, a sample
of the standardised rows, their mean pairwise distance and a threshold. A request's score is
FreqAI's Dissimilarity Index: the distance to the nearest stored row over that mean distance.
The threshold is the 99th percentile of the score of training rows that are not in the sample,
so about 1% of inputs like the training ones are flagged.

Missing features (NaN) sit at the centre (they add no distance); standardised values are
clipped at +/- Z_CLIP so that one absurd feature cannot make the score infinite. Price levels
(``IGNORED``: the guide's ``close``) are left out: a market at a new high is not a new market,
and every later span of real data would be flagged for its level alone.

What it finds, measured (``tests/test_novelty.py``; README "Novelty"): inputs like the training
ones, held out, are flagged about 2-5% of the time; a volatility regime 5x the training one
about 90%; another instrument when it behaves differently (BTC bars in ES ticks: all), but the
features are scale-free by design, so 6E read in its own ticks looks like ES (7%).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from trademl.errors import ModelStoreError

NOVELTY_FILE = "novelty.npz"
SAMPLE_ROWS = 2000  # stored rows: the nearest-neighbour reference (2000 x 40 float32 = 320 KB)
CALIBRATION_ROWS = 2000  # other training rows, whose scores set the threshold
PAIR_ROWS = 500  # rows whose pairwise distances give the mean distance
QUANTILE = 0.99
Z_CLIP = 50.0
SCORE_CHUNK = 1024  # rows scored per matrix product (1024 x 2000 float64: 16 MB)
IGNORED = ("close",)  # price levels: a new level is not a new market


@dataclass(frozen=True)
class NoveltyReference:
    center: np.ndarray  # float64 [F]: median of each feature
    scale: np.ndarray  # float64 [F]: IQR / 1.349 (the std of a normal), else the std, else 1
    weight: np.ndarray  # float64 [F]: 1 for a feature that counts, 0 for one IGNORED
    sample: np.ndarray  # float32 [K, F]: standardised training rows
    mean_distance: float
    threshold: float

    @classmethod
    def fit(cls, X: np.ndarray, names=None, seed: int = 0) -> "NoveltyReference":
        """From training feature rows ``X`` [n, F] (NaN allowed) of the features ``names``."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or len(X) < 20:
            raise ValueError(f"novelty needs at least 20 training rows, got shape {X.shape}")
        with np.errstate(invalid="ignore"):
            center = np.nan_to_num(np.nanmedian(X, axis=0))
            q75, q25 = np.nanpercentile(X, [75, 25], axis=0)
            scale = np.nan_to_num((q75 - q25) / 1.349)
            std = np.nan_to_num(np.nanstd(X, axis=0))
        scale = np.where(scale > 1e-12, scale, np.where(std > 1e-12, std, 1.0))
        weight = np.array([0.0 if n in IGNORED else 1.0 for n in (names or [""] * X.shape[1])])
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(X))
        k = min(SAMPLE_ROWS, len(X) // 2)
        half = cls(center, scale, weight, np.zeros((0, X.shape[1]), np.float32), 1.0, np.inf)
        sample = half.standardize(X[order[:k]]).astype(np.float32)
        pairs = sample[: min(PAIR_ROWS, k)].astype(np.float64)
        d = np.sqrt(np.maximum(_squared_distances(pairs, pairs), 0.0))
        mean_distance = float(d[np.triu_indices(len(pairs), 1)].mean()) if len(pairs) > 1 else 1.0
        mean_distance = mean_distance if mean_distance > 0 else 1.0
        ref = cls(center, scale, weight, sample, mean_distance, np.inf)
        calibration = X[order[k: k + CALIBRATION_ROWS]]
        threshold = float(np.quantile(ref.score(calibration), QUANTILE))
        return cls(center, scale, weight, sample, mean_distance, threshold)

    def standardize(self, X: np.ndarray) -> np.ndarray:
        z = (np.asarray(X, dtype=np.float64) - self.center) / self.scale
        z = np.clip(np.nan_to_num(z, nan=0.0, posinf=Z_CLIP, neginf=-Z_CLIP), -Z_CLIP, Z_CLIP)
        return z * self.weight

    def score(self, X: np.ndarray) -> np.ndarray:
        """Dissimilarity Index of each row of ``X`` [n, F]: nearest stored row's distance / mean distance.
        Rows are taken SCORE_CHUNK at a time, so a fold of 100,000 bars needs no 100,000 x 2,000 matrix."""
        X = np.atleast_2d(X)
        sample, sample_norms = self._sample64
        nearest = np.empty(len(X))
        for lo in range(0, len(X), SCORE_CHUNK):
            z = self.standardize(X[lo: lo + SCORE_CHUNK])
            nearest[lo: lo + SCORE_CHUNK] = _squared_distances(z, sample, sample_norms).min(axis=1)
        return np.sqrt(np.maximum(nearest, 0.0)) / self.mean_distance

    @cached_property
    def _sample64(self) -> tuple[np.ndarray, np.ndarray]:
        """The sample in float64 and its rows' squared norms, once: a served request scores one row,
        and converting 2,000 x 40 numbers per request cost more than the distances."""
        sample = self.sample.astype(np.float64)
        return sample, (sample * sample).sum(axis=1)

    def save(self, path: Path) -> None:
        with open(path, "wb") as f:
            np.savez(f, center=self.center, scale=self.scale, weight=self.weight, sample=self.sample,
                     mean_distance=np.array(self.mean_distance), threshold=np.array(self.threshold))

    @classmethod
    def load(cls, path: Path, n_features: int) -> "NoveltyReference":
        """Read and check a stored reference: a file of another shape or with non-finite numbers is
        refused (the store's hashes catch tampering; this catches a reference of other features)."""
        try:
            with np.load(path, allow_pickle=False) as f:
                ref = cls(f["center"].astype(np.float64), f["scale"].astype(np.float64), f["weight"].astype(np.float64),
                          f["sample"].astype(np.float32), float(f["mean_distance"]), float(f["threshold"]))
        except (OSError, KeyError, ValueError) as e:
            raise ModelStoreError(f"unreadable novelty reference: {e}", where=str(path)) from None
        shapes_ok = ref.center.shape == ref.scale.shape == ref.weight.shape == (n_features,) and ref.sample.ndim == 2 \
            and ref.sample.shape[1] == n_features and len(ref.sample) > 0
        numbers_ok = all(np.isfinite(a).all() for a in (ref.center, ref.scale, ref.weight, ref.sample)) \
            and (ref.scale > 0).all() and ref.mean_distance > 0 and np.isfinite(ref.threshold) and ref.threshold > 0
        if not (shapes_ok and numbers_ok):
            raise ModelStoreError("the novelty reference does not fit the model's features", where=str(path))
        return ref

    def describe(self, row: np.ndarray) -> dict:
        """The response's ``novelty``: score, threshold and whether the row is beyond it."""
        score = float(self.score(row)[0])
        return {"score": round(score, 4), "threshold": round(self.threshold, 4), "novel": bool(score > self.threshold)}


def _squared_distances(a: np.ndarray, b: np.ndarray, b_norms: np.ndarray | None = None) -> np.ndarray:
    """||a_i - b_j||^2 for every pair, as one matrix product (``b_norms``: the rows' of b, if known)."""
    b_norms = (b * b).sum(axis=1) if b_norms is None else b_norms
    return (a * a).sum(axis=1)[:, None] + b_norms[None, :] - 2.0 * a @ b.T
