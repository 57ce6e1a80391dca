"""Performance metrics of a backtest, with the statistics that say whether a Sharpe is real.

Returns-based figures come from DAILY P&L, grouped by futures session: CME Globex trades
from 23:00 UTC the evening before, so a bar belongs to the session of (timestamp + 1h)'s
date, and a year has 252 sessions. The probabilistic Sharpe ratio (Bailey & Lopez de
Prado, 2012) is the probability that the true Sharpe exceeds a benchmark given the sample
length, skewness and kurtosis of the daily returns; the deflated Sharpe ratio (Bailey &
Lopez de Prado, 2014) raises that benchmark to the Sharpe the best of N unskilled trials
would show by luck. The normal distribution is the standard library's.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pandas as pd

from trademl.models.calibration import confidence_bins
from trademl.stats import probabilistic_sharpe_ratio, sharpe_moments  # noqa: F401  (their home is trademl.stats)

SESSIONS_PER_YEAR = 252
# CAGR raises the total return to the power 252 / sessions: over a few weeks that exponent turns
# noise into an annual rate (the demo's 16 sessions, six years apart, gave 1,809%). Below a
# quarter of a year of sessions CAGR, and Calmar which divides it, are NaN ("-" in the report).
MIN_SESSIONS_TO_ANNUALISE = 63
EULER_GAMMA = 0.5772156649015329
_NORMAL = NormalDist()


# ----------------------------------------------------------------------------- sessions


def session_dates(index: pd.DatetimeIndex) -> pd.DatetimeIndex:
    """Trading-session date of each bar: the session that opens at 23:00 UTC belongs to the next day."""
    utc = index.tz_convert("UTC") if index.tz is not None else index
    return (utc + pd.Timedelta(hours=1)).floor("D").tz_localize(None)


def daily_pnl(pnl: np.ndarray, index: pd.DatetimeIndex) -> pd.Series:
    """Net dollars per session, indexed by session date."""
    return pd.Series(np.asarray(pnl, dtype=np.float64), index=session_dates(index)).groupby(level=0).sum()


def daily_returns(pnl: np.ndarray, index: pd.DatetimeIndex, initial_balance: float) -> pd.Series:
    """Each session's P&L over the initial balance.

    The strategy trades a fixed number of contracts, so its P&L does not compound with the
    account; dividing by the running balance would also flip the sign of every return once
    a losing account went below zero.
    """
    return daily_pnl(pnl, index) / initial_balance


# ----------------------------------------------------------------------------- Sharpe statistics


def expected_max_sharpe(n_trials: int, sharpe_variance: float) -> float:
    """The Sharpe the best of ``n_trials`` skill-less trials reaches by luck (per period)."""
    if n_trials <= 1 or not sharpe_variance > 0:
        return 0.0
    q1 = _NORMAL.inv_cdf(1 - 1 / n_trials)
    q2 = _NORMAL.inv_cdf(1 - 1 / (n_trials * math.e))
    return math.sqrt(sharpe_variance) * ((1 - EULER_GAMMA) * q1 + EULER_GAMMA * q2)


def deflated_sharpe_ratio(sharpe: float, n_obs: int, skew: float, kurtosis: float, *, n_trials: int,
                          sharpe_variance: float) -> float:
    """PSR against the expected maximum Sharpe of ``n_trials`` trials whose Sharpes vary by ``sharpe_variance``."""
    return probabilistic_sharpe_ratio(sharpe, n_obs, skew, kurtosis, expected_max_sharpe(n_trials, sharpe_variance))


# ----------------------------------------------------------------------------- backtest overfitting


PBO_BLOCKS = 16  # Bailey et al.'s S: C(16, 8) = 12,870 train/test splits


def _block_sharpes(sums: np.ndarray, squares: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Sharpe (mean / sample sd) of each candidate over the rows whose block sums are given;
    0 where the returns never varied (a candidate that never traded earned 0 every period)."""
    mean = sums / counts
    var = (squares - counts * mean**2) / np.maximum(counts - 1, 1)
    sd = np.sqrt(np.maximum(var, 0.0))
    # A relative floor: a return that is constant up to rounding has no spread to divide by.
    flat = sd <= 1e-12 * np.maximum(np.abs(mean), 1e-300)
    return np.where(flat, 0.0, mean / np.where(flat, 1.0, sd))


def probability_of_backtest_overfitting(returns, n_blocks: int = PBO_BLOCKS) -> float:
    """PBO by combinatorially symmetric cross-validation (Bailey, Borwein, Lopez de Prado & Zhu, 2015).

    ``returns``: [T x N] per-period returns of N candidates over the same T periods. The rows are
    cut into S = ``n_blocks`` consecutive blocks (``np.array_split``: sizes differ by at most one
    row, so no period is dropped; S is lowered to T, rounded down to even, when T < S). For each
    of the C(S, S/2) ways to pick half the blocks as the in-sample set J, the candidate with the
    best Sharpe on J is ranked among all N by its Sharpe on the other half; with its rank r
    (1 = worst, ties averaged), w = r / (N + 1) and logit = ln(w / (1 - w)). PBO is the share of
    splits whose logit is below 0 (the in-sample best did worse than the median out of sample),
    a logit of exactly 0 counting one half: then an unskilled set of candidates has PBO 0.5 for
    any N (with odd N the median rank is otherwise all on one side). NaN with fewer than 2
    candidates or fewer than 4 blocks.
    """
    from itertools import combinations

    r = np.asarray(returns, dtype=np.float64)
    if r.ndim != 2 or r.shape[1] < 2:
        return math.nan
    r = np.nan_to_num(r, nan=0.0)  # no return recorded on a period: nothing was earned
    s = min(int(n_blocks), r.shape[0] - r.shape[0] % 2)
    if s < 4:
        return math.nan
    blocks = np.array_split(np.arange(r.shape[0]), s)
    sums = np.array([r[b].sum(axis=0) for b in blocks])  # [S x N]
    squares = np.array([(r[b] ** 2).sum(axis=0) for b in blocks])
    counts = np.array([len(b) for b in blocks], dtype=np.float64)
    train = np.zeros((math.comb(s, s // 2), s))  # [C x S]: 1 where the block is in J
    for c, chosen in enumerate(combinations(range(s), s // 2)):
        train[c, list(chosen)] = 1.0
    test = 1.0 - train
    sr_in = _block_sharpes(train @ sums, train @ squares, (train @ counts)[:, None])
    sr_out = _block_sharpes(test @ sums, test @ squares, (test @ counts)[:, None])
    best = np.argmax(sr_in, axis=1)
    chosen_out = sr_out[np.arange(len(best)), best][:, None]
    rank = (sr_out < chosen_out).sum(axis=1) + ((sr_out == chosen_out).sum(axis=1) + 1) / 2
    w = rank / (r.shape[1] + 1)
    logit = np.log(w / (1 - w))
    return float(np.mean(logit < 0) + 0.5 * np.mean(logit == 0))


# ----------------------------------------------------------------------------- drawdown


def drawdowns(equity: np.ndarray, initial_balance: float) -> tuple[np.ndarray, np.ndarray]:
    """Dollars and fraction below the running peak (the initial balance counts as a peak)."""
    peak = np.maximum.accumulate(np.r_[initial_balance, equity])[1:]
    dd = peak - equity
    return dd, np.where(peak > 0, dd / peak, np.nan)


# ----------------------------------------------------------------------------- the table


def annual_growth(growth: float, sessions: int) -> float:
    """CAGR of a total ``growth`` factor over ``sessions`` trading sessions; NaN when the sessions are
    too few to annualise (``MIN_SESSIONS_TO_ANNUALISE``) or the account was wiped out."""
    if sessions < MIN_SESSIONS_TO_ANNUALISE or not growth > 0:
        return math.nan
    return growth ** (SESSIONS_PER_YEAR / sessions) - 1


def trade_statistics(trades: pd.DataFrame) -> dict:
    pnl = trades["pnl"].to_numpy(dtype=np.float64)
    wins, losses = pnl[pnl > 0].sum(), -pnl[pnl < 0].sum()
    n = len(pnl)
    return {
        "trades": int(n),
        "contracts_traded_in_trades": int(trades["qty"].sum()),
        "win_rate": float((pnl > 0).mean()) if n else math.nan,
        "profit_factor": float(wins / losses) if losses > 0 else (math.inf if wins > 0 else math.nan),
        "avg_trade": float(pnl.mean()) if n else math.nan,
        "avg_bars_held": float(trades["bars_held"].mean()) if n else math.nan,
    }


def compute_metrics(result, *, n_trials: int = 1, sharpe_variance: float = 0.0) -> dict:
    """Every figure of one backtest result. With ``n_trials`` > 1 the DSR deflates for selection."""
    initial = result.initial_balance
    equity = result.equity
    rets = daily_returns(result.pnl, result.index, initial)
    sr, skew, kurt, t = sharpe_moments(rets.to_numpy())
    r = rets.to_numpy()
    downside = math.sqrt(np.mean(np.minimum(r, 0.0) ** 2)) if len(r) else 0.0
    final = float(equity[-1]) if len(equity) else initial
    total_return = final / initial - 1
    cagr = annual_growth(final / initial, t)
    dd_usd, dd_pct = drawdowns(equity, initial)
    max_dd_usd = float(dd_usd.max()) if len(dd_usd) else 0.0
    max_dd_pct = float(np.nanmax(dd_pct)) if len(dd_pct) else 0.0
    contracts = float(np.abs(result.trade_qty).sum())
    out = {
        "total_pnl": float(final - initial),
        "total_return": total_return,
        "cagr": cagr,
        "sharpe": sr * math.sqrt(SESSIONS_PER_YEAR) if math.isfinite(sr) else math.nan,
        "sortino": float(np.mean(r) / downside * math.sqrt(SESSIONS_PER_YEAR)) if downside > 0 else math.nan,
        "max_drawdown_usd": max_dd_usd,
        "max_drawdown_pct": max_dd_pct,
        "calmar": cagr / max_dd_pct if max_dd_pct > 0 and math.isfinite(cagr) else math.nan,
        **trade_statistics(result.trades),
        "exposure": float(np.mean(result.position != 0)) if len(result.position) else 0.0,
        "turnover_contracts": contracts,
        "turnover_per_session": contracts / t if t else math.nan,
        "costs_paid": float(np.sum(result.costs)),
        "sessions": int(t),
        "daily_sharpe": sr,
        "daily_skew": skew,
        "daily_kurtosis": kurt,
        "psr": probabilistic_sharpe_ratio(sr, t, skew, kurt),
        "dsr": deflated_sharpe_ratio(sr, t, skew, kurt, n_trials=n_trials, sharpe_variance=sharpe_variance),
        "dsr_trials": int(n_trials),
    }
    return out


def trial_sharpe(m: dict) -> float:
    """The per-period Sharpe a candidate counts with among the trials: 0 when it never traded."""
    return 0.0 if m.get("trades") == 0 else m["daily_sharpe"]


def deflate_all(metrics: dict[str, dict], trials: list[str] | None = None, *, n_trials: int | None = None,
                sharpe_variance: float | None = None) -> dict[str, dict]:
    """Recompute every DSR against the best Sharpe that luck gives among the ``trials``.

    ``trials`` names the candidates that were compared to pick a strategy (default: every
    entry). A candidate that never traded was still tried: it counts with Sharpe 0 (its
    return was 0 every day), so it widens the trials' Sharpe variance instead of dropping
    out of it. ``n_trials`` and ``sharpe_variance`` override what is measured from them,
    e.g. when more configurations were tried than are in the table.
    """
    names = list(metrics) if trials is None else trials
    sharpes = [s for s in (trial_sharpe(metrics[k]) for k in names) if math.isfinite(s)]
    variance = float(np.var(sharpes, ddof=1)) if len(sharpes) > 1 else 0.0
    variance = variance if sharpe_variance is None else sharpe_variance
    n = max(len(sharpes), 1) if n_trials is None else n_trials
    out = {}
    for name, m in metrics.items():
        dsr = deflated_sharpe_ratio(m["daily_sharpe"], m["sessions"], m["daily_skew"], m["daily_kurtosis"],
                                    n_trials=n, sharpe_variance=variance)
        out[name] = m | {"dsr": dsr, "dsr_trials": n}
    return out


# ----------------------------------------------------------------------------- calibration


def hit_rate_by_confidence(open_, close, action, confidence, segments, *, horizon: int,
                           bins: int = 10) -> pd.DataFrame:
    """Realized hit rate of the signals by confidence bucket.

    A signal at bar t (action != 0) hits when the price moved its way from the fill at the
    open of t+1 to the close of t+horizon; windows that cross a segment end are left out.
    Buckets are confidence quantiles; returns mean confidence, hit rate and count per bucket.
    """
    open_, close = np.asarray(open_, np.float64), np.asarray(close, np.float64)
    action, confidence = np.asarray(action, np.float64), np.asarray(confidence, np.float64)
    seg = np.asarray(segments)
    n = len(close)
    t = np.flatnonzero((action != 0) & np.isfinite(confidence))
    t = t[t + horizon < n]
    t = t[seg[t + horizon] == seg[t]]
    columns = ["confidence", "hit_rate", "count"]
    if len(t) == 0:
        return pd.DataFrame(columns=columns)
    hit = action[t] * (close[t + horizon] - open_[t + 1]) > 0
    return confidence_bins(confidence[t], hit.astype(float), bins)


def trade_won(bars: pd.DataFrame, segments, execution, action, *, horizon: int) -> np.ndarray:
    """Did the trade recommended at each bar win after costs? 1.0 won, 0.0 lost, NaN no trade or unknown.

    The trade of a BUY (action +1) or SELL (-1) at the close of bar t: one contract entered at
    the open of t+1 and exited at the open of t+``horizon``+1 (the exit decided at the close of
    t+horizon), each fill moved against us by the slippage, each side paying commission: the
    win labels of ``trademl.data.labels`` priced by ``execution`` (the one execution model).
    It won when that net P&L is > 0; where the window crosses a segment end (a gap, a roll, a
    fold boundary) or runs past the bars, the outcome is unknown.
    """
    from trademl.data.labels import make_labels

    # signal_cost_multiple only shapes the signal labels, which are not read here.
    labels = make_labels(bars, np.asarray(segments), execution, horizons=(horizon,), signal_cost_multiple=1.0)
    side = np.sign(np.asarray(action, dtype=np.float64))
    won = np.where(side > 0, labels[f"win_long_{horizon}"], labels[f"win_short_{horizon}"])
    return np.where(side != 0, won, np.nan)


def confidence_calibration(confidence, won, *, bins: int = 10) -> dict:
    """Reliability of a confidence as the probability of a win: the ECE and the table behind it.

    Over the rows where both are known: equal-count bins of confidence (the reliability table of
    ``trademl.models.calibration``), each ``[mean confidence, hit rate, count]``; the ECE is the
    count-weighted mean |mean confidence - hit rate| (None without a row).
    """
    from trademl.models.calibration import expected_calibration_error, reliability_table

    p, y = np.asarray(confidence, np.float64), np.asarray(won, np.float64)
    known = np.isfinite(p) & np.isfinite(y)
    p, y = p[known], y[known]
    table = reliability_table(p, y, bins)
    ece = expected_calibration_error(p, y, bins) if len(p) else None
    return {"ece": ece, "n": int(len(p)),
            "bins": [[row["mean_predicted"], row["observed"], row["count"]] for row in table]}
