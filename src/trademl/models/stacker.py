"""The stacked ensemble (meta-labelling): every base model's vote -> the calibrated probability
that a trade on each side wins after costs, its expected P&L and a bet size.

The question it answers, per bar and side: one contract entered at the next open and closed
``horizon`` bars later (the win labels of ``trademl.data.labels``, priced by the one execution
model), does it win after costs, and what does it make?

Fitting (training time, scikit-learn), on rows **no base model trained on** (the last share of
the training rows, after a purge gap: ``trademl.models.train_all``), from the votes the stored
base models' serving runtimes give there:

* inputs, per base kind: the logits of its buy and sell vote, standardised (a missing model: 0,
  its training mean) and a presence flag; and the bar's context (log ATR in ticks, time of day
  as sin / cos: from its own features, 0 when absent);
* rows are replicated with each base model dropped at random (``MASKED_COPIES``), so the
  meta-model learns what each model adds and a missing model moves the answer toward the base
  rate instead of adding confidence;
* per side, two stages (``trademl.models.stacker_train.meta_regression``): each kind's view (its
  buy logit less its sell logit) gets the slope of a logistic regression of the side's win on
  that view alone, kept only with the side's sign (Breiman's non-negative stacking) and shrunk
  by its evidence, ``max(0, 1 - (NOISE_Z / z)^2)`` with z's standard error clustered over
  blocks of CLUSTER_BARS bars (``stacker_train.view_slope``: a slow vote on a few thousand
  overlapping trades has a few dozen independent looks); an L2
  logistic regression of the win on the combined score (with ``[ensemble] context_inputs``, on
  the presence flags and the context too) follows. Fitted weights are the forecast-combination
  puzzle's loser on small samples: a free regression on every input (tried until 2026-12-02)
  let two models that see the same edge fight over it and gave one model's luck on the
  stacker's few thousand rows its weight; on the planted-edge walk-forwards (three seeds, nine
  folds) the two stages ranked the test bars better in 8 of the 9 folds (bench/README.md).
  The context and presence flags, products of the votes with the context, a gradient-boosted
  meta-model and forward selection of the kinds all cost out-of-sample Sharpe there, so the
  context is off by default; the product of the stages is linear in the inputs and is served
  as one coefficient vector;
* an isotonic map (``IsotonicCalibrator``) fitted on the meta-model's cross-fitted scores (each
  time block of the span scored by a meta-model fitted on the other blocks, purged of
  overlapping outcomes) turns its score into the probability served;
* the rows are the span's and their mirror images (``stacker_train.mirrored``: buy and sell
  votes swapped, the long's and the short's outcomes swapped), so the stacker learns no lean to
  the side the span's day or two drifted to, which the next days do not repeat;
* with no base model present the answer is the base rate, by construction: the span's rate of
  a winning trade on either side (the mirror makes the two sides' rates one);
* the expected P&L of a side, in dollars per contract after costs, is a monotone map of its
  probability: an isotonic regression of the span's trade P&L on the calibrated cross-fitted
  probabilities (``IsotonicCalibrator`` with ``probability=False``). A trade's win and its
  P&L are not the same bet: ``p * average win - (1 - p) * average loss`` with the span's
  unconditional averages (until 2026-12-04) gave up the trades whose wins run larger than
  average where the probability is high; on one generated market it sold on no bar of a fold
  whose probability of a short win passed 0.5 on 73% of them, since the span's average loss
  (370 dollars) outweighed its average win (331);
* ``threshold_auto``: the lowest threshold of ``THRESHOLD_GRID`` whose decisions, from the
  cross-fitted probabilities, were better than chance on the span (``THRESHOLD_T`` standard
  errors of the mean, with the overlap of the trades counted: ``trademl.stats.overlapping_mean_t``),
  raised only where the trades a higher one drops lost beyond ``THRESHOLD_T`` standard errors
  (``stacker_train.best_threshold``), else ``NO_EDGE``: nothing clears it, so the candidate holds
  (what ``confidence_threshold = "auto"`` uses); the same choice for each base model alone,
  from its own vote (the walk-forward's ``<kind> alone`` runs). Without evidence every
  candidate holds alike: the grid's highest threshold as the fallback held a calibrated
  probability back but let an uncalibrated vote share (the PPO agent's action probability,
  above 0.7 on most bars) trade on no evidence at all.

The decision (``StackerRuntime.decide``, numpy only; the predictor and the walk-forward call
it): BUY or SELL only when that side's expected P&L is positive and its probability is above
the threshold (the better expected P&L when both are), else HOLD. Its confidence is that side's
probability; HOLD's is the probability that neither side wins (a long and a short over one
window cannot both win after costs). The size is López de Prado's bet size from the
probability, ``m = 2 Phi(z) - 1`` with ``z = (p - 1/2) / sqrt(p (1 - p))``, times
max_position_size, at least one contract for a trade: it needs only the calibrated
probability, is bounded, and grows slowly near 1/2 where the probability is least sure
(fractional Kelly, which also needs the noisy payoff ratio, sizes the trade in the ``risk``
block when the request carries an account).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

from trademl.errors import ModelStoreError

STACKER_KIND = "stacker"
STACKER_FILE = "stacker.json"
CONTEXT_FEATURES = ("atr_ticks_14", "tod_sin", "tod_cos")  # read from the bar's features when present
THRESHOLD_GRID = (0.5, 0.55, 0.6, 0.65, 0.7)
MASKED_COPIES = 3  # copies of each row with base models dropped at random (beside the row itself)
DROP_PROBABILITY = 0.5
CROSS_FIT_BLOCKS = 5  # time blocks of the out-of-fold scores the isotonic map and thresholds are fitted on
L2_C = 0.1  # scikit-learn's C (inverse L2 strength) of the logistic regression on the combined score
VIEW_C = 1.0  # ... and of each kind's one-input regression (one slope: little to shrink)
MIN_VOTED_ROWS = 100  # a kind that voted on fewer of the rows gets no weight
NOISE_Z = 2.0  # a kind's slope within this many standard errors of 0 gets no weight; beyond, 1 - (NOISE_Z / z)^2 of it
CLUSTER_BARS = 30  # the blocks of bars its standard error treats as one look (the longest label horizon)
VOTE_FLOOR = 1e-4  # votes are clipped into [floor, 1 - floor] before their logit
MIN_TRADES = 30  # a threshold with fewer decisions on the stacker's rows is not chosen
THRESHOLD_T = 1.645  # ... nor one whose decisions' mean P&L there is within one-sided 95% of chance
NO_EDGE = 1.0  # the auto threshold when no threshold beat chance: no probability or vote share exceeds it
SIDES = ("long", "short")
_ERF = np.vectorize(math.erf, otypes=[np.float64])  # numpy has no erf; serving needs no scipy


# ----------------------------------------------------------------------------- inputs


def sigmoid(x: np.ndarray) -> np.ndarray:
    """The logistic regression's probability from its linear score."""
    return 1.0 / (1.0 + np.exp(-x))


def raw_inputs(votes: dict, kinds: list[str], n: int) -> tuple[np.ndarray, np.ndarray]:
    """([n, 2K] logits of each kind's buy and sell vote, NaN where it did not vote; [n, K] present)."""
    stacked = np.full((n, len(kinds), 3), np.nan)
    for j, kind in enumerate(kinds):
        v = votes.get(kind)
        if v is not None:
            stacked[:, j] = np.asarray(v, np.float64).reshape(n, 3)
    present = np.isfinite(stacked).all(axis=2)
    p = np.minimum(np.maximum(stacked[:, :, 1:], VOTE_FLOOR), 1 - VOTE_FLOOR)  # NaN stays NaN
    values = np.log(p / (1 - p)).reshape(n, 2 * len(kinds))  # kind 0 buy, kind 0 sell, kind 1 buy, ...
    values[~np.repeat(present, 2, axis=1)] = np.nan  # a kind that did not vote in full has no say
    return values, present


def context_inputs(rows: np.ndarray | None, feature_names: list[str], n: int) -> np.ndarray:
    """[n, C] the context of each decision bar from its feature row (NaN where absent)."""
    out = np.full((n, len(CONTEXT_FEATURES)), np.nan)
    if rows is None:
        return out
    rows = np.asarray(rows, np.float64).reshape(n, -1)
    for c, name in enumerate(CONTEXT_FEATURES):
        if name in feature_names:
            x = rows[:, feature_names.index(name)]
            out[:, c] = np.log(np.where(x > 0, x, np.nan)) if name == "atr_ticks_14" else x
    return out


@dataclass(frozen=True)
class Scaling:
    """Means and spreads that standardise the raw and context inputs (fitted on present rows)."""

    mean: np.ndarray
    scale: np.ndarray
    context_mean: np.ndarray
    context_scale: np.ndarray

    @classmethod
    def fit(cls, values: np.ndarray, context: np.ndarray) -> "Scaling":
        def moments(x):
            mean = np.array([np.nanmean(c) if np.isfinite(c).any() else 0.0 for c in x.T])
            sd = np.array([np.nanstd(c) if np.isfinite(c).sum() > 1 else 1.0 for c in x.T])
            return mean, np.where(np.isfinite(sd) & (sd > 1e-9), sd, 1.0)

        return cls(*moments(values), *moments(context))


def design(values: np.ndarray, present: np.ndarray, context: np.ndarray, scaling: Scaling) -> np.ndarray:
    """[n, D] the meta-model's inputs: standardised logits (0 where missing), presence flags and
    the standardised context inputs (0 where missing)."""
    z = (values - scaling.mean) / scaling.scale
    c = (context - scaling.context_mean) / scaling.context_scale
    z[~np.isfinite(z)], c[~np.isfinite(c)] = 0.0, 0.0
    return np.concatenate([z, present.astype(np.float64), c], axis=1)


# ----------------------------------------------------------------------------- the decision


@dataclass
class StackedDecision:
    """The stacked decision for every row (codes of ``trademl.market.actions``)."""

    action: np.ndarray  # int8 [n]: 0 hold, 1 buy, 2 sell
    confidence: np.ndarray  # the recommended trade's win probability; HOLD: that neither side wins
    p_long: np.ndarray
    p_short: np.ndarray
    pnl_long: np.ndarray  # expected dollars per contract after costs
    pnl_short: np.ndarray
    contracts: np.ndarray  # int [n]: the bet size (0 for HOLD)
    threshold: float
    informed: np.ndarray  # bool [n]: at least one base model voted

    @property
    def expected_pnl(self) -> np.ndarray:
        """The recommended side's expected P&L; HOLD: 0 (no trade)."""
        return np.where(self.action == 1, self.pnl_long, np.where(self.action == 2, self.pnl_short, 0.0))


def choose_action(p_long, p_short, pnl_long, pnl_short, threshold: float) -> np.ndarray:
    """BUY / SELL where that side's expected P&L is > 0 and its probability > ``threshold`` (the
    better expected P&L when both qualify), else HOLD."""
    buy = (pnl_long > 0) & (p_long > threshold)
    sell = (pnl_short > 0) & (p_short > threshold)
    both = buy & sell
    buy, sell = buy & ~(both & (pnl_short > pnl_long)), sell & ~(both & (pnl_long >= pnl_short))
    return np.where(buy, 1, np.where(sell, 2, 0)).astype(np.int8)


def bet_size(p: np.ndarray, max_contracts: int) -> np.ndarray:
    """López de Prado's bet size times ``max_contracts``, rounded, at least 1 (see the module doc)."""
    p = np.clip(np.asarray(p, np.float64), VOTE_FLOOR, 1 - VOTE_FLOOR)
    z = (p - 0.5) / np.sqrt(p * (1 - p))
    m = _ERF(z / math.sqrt(2.0))  # 2 Phi(z) - 1
    return np.clip(np.rint(m * max_contracts), 1, max_contracts).astype(np.int64)


# ----------------------------------------------------------------------------- serving


class StackerRuntime:
    """A stored stacker opened for serving: numpy only (see the module doc)."""

    def __init__(self, params: dict, version: str = "", base_versions: dict | None = None):
        self.kinds = list(params["kinds"])
        self.horizon = int(params["horizon"])
        self.scaling = Scaling(*(np.asarray(params[k], np.float64) for k in
                                 ("mean", "scale", "context_mean", "context_scale")))
        self.coef = {s: np.asarray(params["coef"][s], np.float64) for s in SIDES}
        self.intercept = {s: float(params["intercept"][s]) for s in SIDES}
        from trademl.models.calibration import IsotonicCalibrator

        self.calibrators = {s: IsotonicCalibrator.from_dict(params["calibration"][s], where=STACKER_FILE)
                            for s in SIDES}
        self.base_rate = {s: float(params["base_rate"][s]) for s in SIDES}
        self.average_win = {s: float(params["average_win"][s]) for s in SIDES}
        self.average_loss = {s: float(params["average_loss"][s]) for s in SIDES}
        self.pnl_maps = {s: self._pnl_map(params, s) for s in SIDES}
        self.threshold_auto = float(params["threshold_auto"])
        self.alone_thresholds = {k: float(v) for k, v in params.get("alone_thresholds", {}).items()}
        self.version = version
        self.base_versions = dict(base_versions or {})

    def _pnl_map(self, params: dict, side: str):
        """The side's expected P&L as a monotone map of its probability; a stacker stored before
        the map (2026-12-04) has the straight line p * average win - (1 - p) * average loss."""
        from trademl.models.calibration import IsotonicCalibrator

        if "pnl_map" in params:
            return IsotonicCalibrator.from_dict(params["pnl_map"][side], where=STACKER_FILE, probability=False)
        return IsotonicCalibrator((0.0, 1.0), (-self.average_loss[side], self.average_win[side]))

    @classmethod
    def load(cls, stored) -> "StackerRuntime":
        where = str(stored.path / STACKER_FILE)
        try:
            params = json.loads(stored.file(STACKER_FILE).read_text())
            runtime = cls(params, stored.version, (stored.manifest.get("model") or {}).get("base_versions"))
        except ModelStoreError:
            raise
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ModelStoreError(f"the stacker's parameters are unreadable: {type(e).__name__}: {e}", where=where,
                                  hint="retrain with `trademl train all`") from None
        runtime._check(where)
        return runtime

    def _check(self, where: str) -> None:
        """Refuse parameters of the wrong shape or not finite (a tampered or truncated file)."""
        k, c = len(self.kinds), len(CONTEXT_FEATURES)
        d = 2 * k + k + c
        arrays = [self.scaling.mean, self.scaling.scale, self.scaling.context_mean, self.scaling.context_scale,
                  *self.coef.values()]
        shapes = [(2 * k,), (2 * k,), (c,), (c,), (d,), (d,)]
        scalars = [*self.intercept.values(), *self.base_rate.values(), *self.average_win.values(),
                   *self.average_loss.values(), self.threshold_auto]
        ok = (all(a.shape == s and np.isfinite(a).all() for a, s in zip(arrays, shapes))
              and all(math.isfinite(v) for v in scalars) and np.all(self.scaling.scale > 0)
              and all(0 <= self.base_rate[s] <= 1 and self.average_win[s] >= 0 and self.average_loss[s] >= 0
                      for s in SIDES))
        if not ok:
            raise ModelStoreError("the stacker's parameters have the wrong shapes or are not finite", where=where,
                                  hint="retrain with `trademl train all`")

    def probabilities(self, votes: dict, rows, feature_names: list[str], n: int):
        """(p_long, p_short, informed): the calibrated win probabilities of each side."""
        values, present = raw_inputs(votes, self.kinds, n)
        X = design(values, present, context_inputs(rows, feature_names, n), self.scaling)
        informed = present.any(axis=1)
        out = []
        for s in SIDES:
            raw = sigmoid(X @ self.coef[s] + self.intercept[s])
            out.append(np.where(informed, self.calibrators[s].apply(raw), self.base_rate[s]))
        return out[0], out[1], informed

    def expected_pnl(self, p: np.ndarray, side: str) -> np.ndarray:
        """Dollars per contract after costs that the side's trade is expected to make at probability ``p``."""
        return self.pnl_maps[side].apply(p)

    def decide(self, votes: dict, rows, feature_names: list[str], *, threshold: float | None = None,
               max_contracts: int = 1) -> StackedDecision:
        """The decision for ``n`` rows from the base kinds' votes ({kind: [n, 3]}, NaN rows where a
        model did not run) and the decision bars' feature rows; ``threshold`` None: the auto one."""
        n = len(np.atleast_2d(rows)) if rows is not None else len(next(iter(votes.values())))
        t = self.threshold_auto if threshold is None else float(threshold)
        p_long, p_short, informed = self.probabilities(votes, rows, feature_names, n)
        pnl_long, pnl_short = self.expected_pnl(p_long, "long"), self.expected_pnl(p_short, "short")
        action = choose_action(p_long, p_short, pnl_long, pnl_short, t)
        neither = np.clip(1.0 - p_long - p_short, 0.0, 1.0)
        confidence = np.where(action == 1, p_long, np.where(action == 2, p_short, neither))
        contracts = np.zeros(n, np.int64)
        trades = action != 0
        if trades.any():
            contracts[trades] = bet_size(confidence[trades], max_contracts)
        return StackedDecision(action, confidence, p_long, p_short, pnl_long, pnl_short, contracts, t, informed)
