"""Statistics that say whether a Sharpe ratio is real, for every floor that needs them.

The probabilistic Sharpe ratio (Bailey & Lopez de Prado, 2012) is the probability that the
true Sharpe exceeds a benchmark given the sample length, skewness and kurtosis of the
returns. The backtest (``trademl.backtest.metrics``, which deflates it for the trials tried)
and the PPO trainer's held-out skill both read it from here. The normal distribution is the
standard library's.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

_NORMAL = NormalDist()


def sharpe_moments(returns) -> tuple[float, float, float, int]:
    """(per-period Sharpe, skewness, kurtosis (3 for a normal), number of periods)."""
    r = np.asarray(returns, dtype=np.float64)
    r = r[np.isfinite(r)]
    t = len(r)
    if t < 2:
        return math.nan, math.nan, math.nan, t
    sd = r.std(ddof=1)
    if sd == 0:
        return math.nan, math.nan, math.nan, t
    z = (r - r.mean()) / r.std(ddof=0)
    return float(r.mean() / sd), float(np.mean(z**3)), float(np.mean(z**4)), t


def probabilistic_sharpe_ratio(sharpe: float, n_obs: int, skew: float = 0.0, kurtosis: float = 3.0,
                               benchmark: float = 0.0) -> float:
    """P(true Sharpe > benchmark): Phi((SR - SR*) sqrt(T-1) / sqrt(1 - g3 SR + (g4-1)/4 SR^2)).

    ``sharpe`` and ``benchmark`` are per period (not annualised), as are the moments.
    """
    se = sharpe_standard_error(sharpe, n_obs, skew, kurtosis)
    if not math.isfinite(se):
        return math.nan
    return _NORMAL.cdf((sharpe - benchmark) / se)


def sharpe_standard_error(sharpe: float, n_obs: int, skew: float = 0.0, kurtosis: float = 3.0) -> float:
    """Standard error of a per-period Sharpe estimate: sqrt((1 - g3 SR + (g4-1)/4 SR^2) / (T-1))
    (Mertens 2002, as the PSR uses it); NaN when it cannot be estimated."""
    if not (math.isfinite(sharpe) and n_obs >= 2):
        return math.nan
    variance = 1 - skew * sharpe + (kurtosis - 1) / 4 * sharpe**2
    return math.sqrt(variance / (n_obs - 1)) if variance > 0 else math.nan


def overlapping_mean_t(values, horizon: int) -> float:
    """The t-statistic of the mean of per-bar P&L whose trades overlap over ``horizon`` bars (an
    h-bar trade opened on any bar): the mean over its Hansen-Hodrick standard error, whose
    long-run variance sums the autocovariances up to lag h - 1 unweighted, exact for the MA(h-1)
    such overlap makes under the null of unpredictable returns. Sparse decisions overlap less
    than a trade on every bar, so this counts them for what they are; where that variance is not
    positive (a short, odd sample) it falls back to the conservative bound, one independent
    outcome per ``horizon`` bars. 0 for a constant series."""
    x = np.asarray(values, dtype=np.float64)
    n = len(x)
    if n < 2 or not x.std() > 0:
        return 0.0
    d = x - x.mean()
    gamma0 = d @ d / n
    long_run = gamma0 + 2 * sum(d[k:] @ d[:-k] / n for k in range(1, min(horizon, n)))
    if not long_run > 0:
        long_run = gamma0 * max(1, horizon)
    return float(x.mean() / math.sqrt(long_run / n))
