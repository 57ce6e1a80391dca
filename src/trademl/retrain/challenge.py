"""Champion against challenger on the held-out span: the same trades, the same figures, one test.

Each model is scored alone, as the walk-forward scores "each model alone": its votes on the
held-out bars from its serving runtime (``predict_fold``), the counted signals above the
threshold the walk-forward would use, traded by ``run_backtest`` through the one broker and
cost model, held as the walk-forward holds them (``holding_bars``). Its figures are the
walk-forward's (``compute_metrics``: Sharpe of the daily P&L after costs, PSR, trades, P&L).

The test is one-sided and paired, on the per-session P&L difference D_s = challenger_s -
champion_s over the same sessions of the held-out span (sessions as the walk-forward's Sharpe
counts them, ``trademl.backtest.metrics.daily_pnl``): Student's t = mean(D) / (sd(D) / sqrt(k))
with k - 1 degrees of freedom, p = P(T > t). Per session rather than per bar: a held position
makes neighbouring bars' P&L depend on each other, and the bars of one volatility regime share
their scale, so thousands of bars are far fewer independent observations than they look; a
per-bar test (even with a Newey-West variance) promoted 3 of 10 challengers on stationary
markets in our trial, where alpha = 0.05 allows about one. A session's P&L sums about a
thousand bars, close to normal, and sessions are close to independent, which is what the t-test
assumes. Promoted when p < alpha, so a challenger no better than the champion is promoted with
probability about alpha. Fewer than ``MIN_SESSIONS`` sessions, or identical P&L (neither
traded, or the same trades), is no evidence: p = 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
import numpy as np
import pandas as pd

from trademl.backtest.engine import run_backtest
from trademl.backtest.metrics import daily_pnl
from trademl.backtest.walkforward import backtest_segments, holding_bars, open_runtimes, predict_fold
from trademl.config import Config
from trademl.market.actions import direction_of

TEST_NAME = "one-sided paired t-test of the per-session P&L difference (challenger - champion)"
MIN_SESSIONS = 3  # a t-test on fewer differences has one degree of freedom or none
FIGURES = ("sharpe", "psr", "total_pnl", "trades", "win_rate", "costs_paid", "sessions")


@dataclass
class Score:
    """One model on the held-out span: its P&L per session and the walk-forward's figures."""

    kind: str
    version: str
    daily_pnl: pd.Series  # net dollars per session (index: session date)
    figures: dict


@dataclass
class PairedTest:
    """The one-sided test that the challenger's mean session P&L beats the champion's."""

    statistic: float
    p_value: float
    mean_difference: float
    sessions: int

    def to_record(self) -> dict:
        return {"name": TEST_NAME, "statistic": plain_figure(self.statistic), "p_value": plain_figure(self.p_value),
                "mean_session_pnl_difference": plain_figure(self.mean_difference), "sessions": self.sessions,
                "degrees_of_freedom": max(self.sessions - 1, 0)}


def score_model(stored, dataset, rows: np.ndarray, config: Config) -> Score:
    """``stored`` (a StoredModel) alone on the dataset ``rows``, as the walk-forward trades a model
    alone (see the module doc). A model that reads other features is a SchemaError naming them."""
    stored.check_schema(dataset.feature_names)
    kind = stored.kind
    segments = backtest_segments(dataset.segments[rows], np.zeros(len(rows)))
    predicted = predict_fold(open_runtimes({kind: stored}), {kind: 1.0}, dataset, rows, segments, config)
    action, confidence = predicted.alone[kind]
    bars = dataset.bars().iloc[rows]
    bars.attrs["symbol"] = dataset.symbol
    signals = pd.DataFrame({"action": direction_of(action), "confidence": confidence}, index=bars.index)
    result = run_backtest(bars, signals, spec=dataset.spec, segments=segments, name=f"{kind} {stored.version}",
                          config=config, confidence_threshold=predicted.thresholds[kind], hold_bars=holding_bars(config))
    figures = {name: plain_figure(result.metrics[name]) for name in FIGURES}
    return Score(kind, stored.version, daily_pnl(result.pnl, result.index), figures)


def paired_test(challenger: Score, champion: Score) -> PairedTest:
    """The one-sided paired t-test of the module doc on the two scores' sessions."""
    from scipy.stats import t as student_t

    d = (challenger.daily_pnl - champion.daily_pnl.reindex(challenger.daily_pnl.index)).to_numpy(np.float64)
    d = d[np.isfinite(d)]
    k = len(d)
    mean = float(d.mean()) if k else math.nan
    sd = float(d.std(ddof=1)) if k > 1 else 0.0
    if k < MIN_SESSIONS or not sd > 0:  # too few sessions, or no difference at all: no evidence
        return PairedTest(math.nan, 1.0, mean, k)
    statistic = mean / (sd / math.sqrt(k))
    return PairedTest(statistic, float(student_t.sf(statistic, df=k - 1)), mean, k)


def plain_figure(value):
    """A figure as JSON holds it: NaN and infinities as None, numpy scalars as Python ones."""
    if value is None:
        return None
    value = float(value) if not isinstance(value, (int, bool)) else value
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
