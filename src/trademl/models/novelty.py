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

The features are scale-free by design (a model trained at one price level reads another), so an
instrument that moves alike in its own ticks looks like the training one to the index alone: 6E
in its own ticks beside an ES model scores as ES does. What does tell another instrument is its
price grid: every ES price is a multiple of 0.25, and a price that is not cannot be ES. When the
training closes all sit on the model's tick grid (``ON_GRID_SHARE`` of them or more, so a series
adjusted by ratio or a synthetic one off the grid switches the check off), a request whose close
is off that grid is novel too (``off_tick_grid``); the close is one of the features, so the rule
reads the same row in the predictor, the bar stream and the walk-forward.

What it finds, measured (``tests/test_novelty.py``; README "Novelty"): inputs like the training
ones, held out, are flagged about 2-5% of the time; a volatility regime 5x the training one
about 90%; another instrument: BTC bars read as ES all (by the index), SPY bars read as ES and
6E bars in their own ticks >= 95% (by the grid).
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
PRICE = "close"  # the feature whose tick grid tells the instrument
ON_GRID_SHARE = 0.99  # training closes on the tick grid needed to check a request's
GRID_TOLERANCE = 0.01  # ticks: float32 storage of a price moves it by far less


@dataclass(frozen=True)
class NoveltyReference:
    center: np.ndarray  # float64 [F]: median of each feature
    scale: np.ndarray  # float64 [F]: IQR / 1.349 (the std of a normal), else the std, else 1
    weight: np.ndarray  # float64 [F]: 1 for a feature that counts, 0 for one IGNORED
    sample: np.ndarray  # float32 [K, F]: standardised training rows
    mean_distance: float
    threshold: float
    tick_size: float = 0.0  # the grid a request's close must sit on; 0: no grid check
    price_column: int = -1  # where the close is in a row; -1: no close among the features

    @classmethod
    def fit(cls, X: np.ndarray, names=None, seed: int = 0, tick_size: float | None = None) -> "NoveltyReference":
        """From training feature rows ``X`` [n, F] (NaN allowed) of the features ``names``;
        ``tick_size``: the instrument's, for the grid check (None: no check)."""
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
        column = list(names).index(PRICE) if names and PRICE in names else -1
        grid = _training_grid(X[:, column] if column >= 0 else None, tick_size)
        return cls(center, scale, weight, sample, mean_distance, threshold, grid, column if grid else -1)

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

    def off_grid(self, X: np.ndarray) -> np.ndarray:
        """Rows whose close is off the training instrument's tick grid (False where unknown or unchecked)."""
        X = np.atleast_2d(X)
        if not self.tick_size or self.price_column < 0:
            return np.zeros(len(X), dtype=bool)
        return ~_on_grid(X[:, self.price_column], self.tick_size)

    def novel(self, X: np.ndarray) -> np.ndarray:
        """Rows unlike the training inputs: the index beyond the threshold, or a close off the grid."""
        return (self.score(X) > self.threshold) | self.off_grid(X)

    @cached_property
    def _sample64(self) -> tuple[np.ndarray, np.ndarray]:
        """The sample in float64 and its rows' squared norms, once: a served request scores one row,
        and converting 2,000 x 40 numbers per request cost more than the distances."""
        sample = self.sample.astype(np.float64)
        return sample, (sample * sample).sum(axis=1)

    def save(self, path: Path) -> None:
        with open(path, "wb") as f:
            np.savez(f, center=self.center, scale=self.scale, weight=self.weight, sample=self.sample,
                     mean_distance=np.array(self.mean_distance), threshold=np.array(self.threshold),
                     tick_size=np.array(self.tick_size), price_column=np.array(self.price_column))

    @classmethod
    def load(cls, path: Path, n_features: int) -> "NoveltyReference":
        """Read and check a stored reference: a file of another shape or with non-finite numbers is
        refused (the store's hashes catch tampering; this catches a reference of other features)."""
        try:
            with np.load(path, allow_pickle=False) as f:
                grid = (float(f["tick_size"]), int(f["price_column"])) if "tick_size" in f else (0.0, -1)  # older: none
                ref = cls(f["center"].astype(np.float64), f["scale"].astype(np.float64), f["weight"].astype(np.float64),
                          f["sample"].astype(np.float32), float(f["mean_distance"]), float(f["threshold"]), *grid)
        except (OSError, KeyError, ValueError) as e:
            raise ModelStoreError(f"unreadable novelty reference: {e}", where=str(path)) from None
        shapes_ok = ref.center.shape == ref.scale.shape == ref.weight.shape == (n_features,) and ref.sample.ndim == 2 \
            and ref.sample.shape[1] == n_features and len(ref.sample) > 0
        numbers_ok = all(np.isfinite(a).all() for a in (ref.center, ref.scale, ref.weight, ref.sample)) \
            and (ref.scale > 0).all() and ref.mean_distance > 0 and np.isfinite(ref.threshold) and ref.threshold > 0 \
            and np.isfinite(ref.tick_size) and ref.tick_size >= 0 and -1 <= ref.price_column < n_features
        if not (shapes_ok and numbers_ok):
            raise ModelStoreError("the novelty reference does not fit the model's features", where=str(path))
        return ref

    def describe(self, row: np.ndarray) -> dict:
        """The response's ``novelty``: score, threshold, whether the close is off the tick grid, and
        whether the row is novel (beyond the threshold or off the grid)."""
        score, off_grid = float(self.score(row)[0]), bool(self.off_grid(row)[0])
        return {"score": round(score, 4), "threshold": round(self.threshold, 4), "off_tick_grid": off_grid,
                "novel": bool(score > self.threshold or off_grid)}


def _on_grid(prices: np.ndarray, tick_size: float) -> np.ndarray:
    """Prices that are a whole number of ticks (NaN counts as on it: a missing close says nothing)."""
    ticks = np.asarray(prices, dtype=np.float64) / tick_size
    with np.errstate(invalid="ignore"):
        return ~(np.abs(ticks - np.round(ticks)) > GRID_TOLERANCE + 1e-6 * np.abs(ticks))


def _training_grid(closes: np.ndarray | None, tick_size: float | None) -> float:
    """The tick size to check requests against: the instrument's when its training closes sit on its
    grid (ON_GRID_SHARE or more of the known ones), else 0 (no check)."""
    if closes is None or not tick_size or not np.isfinite(tick_size) or tick_size <= 0:
        return 0.0
    known = closes[np.isfinite(closes)]
    return float(tick_size) if len(known) and _on_grid(known, tick_size).mean() >= ON_GRID_SHARE else 0.0


def _squared_distances(a: np.ndarray, b: np.ndarray, b_norms: np.ndarray | None = None) -> np.ndarray:
    """||a_i - b_j||^2 for every pair, as one matrix product (``b_norms``: the rows' of b, if known)."""
    b_norms = (b * b).sum(axis=1) if b_norms is None else b_norms
    return (a * a).sum(axis=1)[:, None] + b_norms[None, :] - 2.0 * a @ b.T
