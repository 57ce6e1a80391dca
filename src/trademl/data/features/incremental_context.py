"""Incremental steps of the cross-market features (trademl.data.features.cross_market).

The batch reads the context instrument's close as of each of our bars (``bar.context_close``
here, NaN when missing or stale) and treats it like any series of ours: lags and windows
restart at OUR segment starts and are NaN while the segment is younger than them. Each step
keeps only its lag's or window's last values, so a bar costs O(1); the window sums are
rounded as the batch rounds them (``BlockWindowSum``) so that a flat window gives the batch's
exact 0 variance, and with it the batch's 0 correlation and beta instead of noise.
"""

from __future__ import annotations

import math
from collections import deque

from trademl.data.features import cross_market
from trademl.data.features.incremental import StreamBar
from trademl.data.features.incremental_intraday import BlockWindowSum


class _Lagged:
    """x[t] - x[t-lag] within our segment; NaN where t-lag is in an earlier one (``cross_market._lagged``)."""

    def __init__(self, lag: int):
        self.lag = lag
        self.values = deque(maxlen=lag + 1)

    def push(self, x: float, bar: StreamBar) -> float:
        self.values.append(x)
        if bar.since < self.lag:  # from here on all lag + 1 values kept are of this segment
            return math.nan
        return self.values[-1] - self.values[0]


def _context_log_close(bar: StreamBar) -> float:
    return math.log(bar.context_close) if math.isfinite(bar.context_close) else math.nan


class ContextReturnStep:
    """The context instrument's log return over our last ``lag`` bars (cross_market.context_return)."""

    def __init__(self, tick_size: float, lag: int):
        self.theirs = _Lagged(lag)

    def update(self, bar: StreamBar, shared=None) -> float:
        return self.theirs.push(_context_log_close(bar), bar)


class RelativeStrengthStep:
    """Our log return minus the context's over ``lag`` bars (cross_market.relative_strength)."""

    def __init__(self, tick_size: float, lag: int):
        self.ours, self.theirs = _Lagged(lag), _Lagged(lag)

    def update(self, bar: StreamBar, shared=None) -> float:
        ours = self.ours.push(bar.log_close, bar)
        return ours - self.theirs.push(_context_log_close(bar), bar)


class _ReturnMoments:
    """Rolling (cov, var ours, var theirs) of one-bar log returns over ``window`` bars, as
    ``cross_market._return_moments``: E[xy] - E[x]E[y], variances clipped at 0, all NaN while a
    window holds a missing context return or reaches before our segment."""

    def __init__(self, window: int):
        self.window = window
        self.theirs_ret1 = _Lagged(1)
        self.holes, self.sx, self.sxx, self.sy, self.syy, self.sxy = (BlockWindowSum(window) for _ in range(6))

    def update(self, bar: StreamBar) -> tuple[float, float, float]:
        theirs = self.theirs_ret1.push(_context_log_close(bar), bar)
        missing = not math.isfinite(theirs)
        if missing:
            theirs = 0.0  # a zero in the sums, counted apart as a hole
        ours = bar.ret1
        # every sum is pushed on every bar: the block rounding follows the batch frame's rows
        holes = self.holes.push(1.0 if missing else 0.0)
        sums = (self.sx.push(ours), self.sxx.push(ours * ours), self.sy.push(theirs),
                self.syy.push(theirs * theirs), self.sxy.push(ours * theirs))
        if bar.since < self.window or holes > 0:  # the one-bar returns start one bar into the segment
            return math.nan, math.nan, math.nan
        sx, sxx, sy, syy, sxy = sums
        w = self.window
        mean_x, mean_y = sx / w, sy / w
        cov = sxy / w - mean_x * mean_y
        var_x = max(sxx / w - mean_x * mean_x, 0.0)
        var_y = max(syy / w - mean_y * mean_y, 0.0)
        return cov, var_x, var_y


class RollingCorrelationStep:
    """Correlation of our one-bar returns with the context's over ``window`` bars, in [-1, 1];
    0 when either is flat (cross_market.rolling_correlation)."""

    def __init__(self, tick_size: float, window: int):
        self.moments = _ReturnMoments(window)

    def update(self, bar: StreamBar, shared=None) -> float:
        cov, var_x, var_y = self.moments.update(bar)
        if not math.isfinite(cov):
            return math.nan
        den = math.sqrt(var_x * var_y)
        return min(max(cov / den, -1.0), 1.0) if den > 0 else 0.0


class RollingBetaStep:
    """Beta of our one-bar returns on the context's over ``window`` bars; 0 when the context is
    flat (cross_market.rolling_beta)."""

    def __init__(self, tick_size: float, window: int):
        self.moments = _ReturnMoments(window)

    def update(self, bar: StreamBar, shared=None) -> float:
        cov, _, var_y = self.moments.update(bar)
        if not math.isfinite(cov):
            return math.nan
        return cov / var_y if var_y > 0 else 0.0


STEPS = {
    cross_market.context_return: ContextReturnStep,
    cross_market.relative_strength: RelativeStrengthStep,
    cross_market.rolling_correlation: RollingCorrelationStep,
    cross_market.rolling_beta: RollingBetaStep,
}
