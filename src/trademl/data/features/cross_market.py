"""Cross-market context: another instrument's aligned returns, relative strength, correlation and beta.

ES leads NQ by a few seconds, bonds lead equities on a data release: the other market's
latest move is information the single-instrument indicators cannot hold. The context's
close is joined as of each bar (BarContext.context_close: its last bar opened at or before
ours, so it closed no later than ours), then read on OUR bars and segments like any series:
windows restart at our segment boundaries and a stale or missing context value is NaN.
"""

from __future__ import annotations

import numpy as np

from trademl.data.features.context import BarContext
from trademl.errors import DataError


def _context_log_close(ctx: BarContext) -> np.ndarray:
    if ctx.context_close is None:
        raise DataError("the cross-market features need another instrument's bars", where="features",
                        hint="give them with --context FILE (or context_bars in a request)")
    return ctx.cached(("context_log_close",), lambda: np.log(ctx.context_close))


def _lagged(x: np.ndarray, ctx: BarContext, lag: int) -> np.ndarray:
    """x[t] - x[t-lag] within our segment; NaN where t-lag is in an earlier one."""
    out = np.full(len(x), np.nan)
    if lag < len(x):
        np.subtract(x[lag:], x[:-lag], out=out[lag:])
    out[ctx.segs.young(lag)] = np.nan
    return out


def context_return(ctx: BarContext, lag: int) -> np.ndarray:
    """log return of the context instrument over our last ``lag`` bars."""
    return _lagged(_context_log_close(ctx), ctx, lag)


def relative_strength(ctx: BarContext, lag: int) -> np.ndarray:
    """Our log return minus the context's over ``lag`` bars: positive when we outran it."""
    return _lagged(ctx.log_close, ctx, lag) - context_return(ctx, lag)


def _return_moments(ctx: BarContext, window: int):
    """Rolling (cov, var ours, var theirs) of one-bar log returns over ``window`` bars; a window
    holding a missing context return is NaN.

    Our sums read the prefix sums of the one-bar return and its square that the volatility
    features already built (a window with a hole is NaN, so what ours holds there never counts);
    the context's missing returns are zeros in its sums and counted apart."""

    def make():
        theirs = context_return(ctx, 1)
        missing = ~np.isfinite(theirs)
        theirs[missing] = 0.0
        holes = ctx.window_sum("context_missing", lambda: missing.astype(np.float64), window, x_first_valid=1)
        sx = ctx.window_sum("ret1", lambda: ctx.ret1, window, x_first_valid=1)
        sxx = ctx.window_sum("ret1_squared", lambda: ctx.ret1 * ctx.ret1, window, x_first_valid=1)
        sy = ctx.window_sum("context_ret1", lambda: theirs, window, x_first_valid=1)
        syy = ctx.window_sum("context_ret1_squared", lambda: theirs * theirs, window, x_first_valid=1)
        sxy = ctx.window_sum("context_cross", lambda: ctx.ret1 * theirs, window, x_first_valid=1)
        # cov = E[xy] - E[x]E[y], var = E[x^2] - E[x]^2, in place (1M-bar arrays: few temporaries)
        sx /= window
        sy /= window
        cov = sxy
        cov /= window
        cov -= sx * sy
        var_x, var_y = sxx, syy
        var_x /= window
        var_x -= sx * sx
        var_y /= window
        var_y -= sy * sy
        np.maximum(var_x, 0.0, out=var_x)
        np.maximum(var_y, 0.0, out=var_y)
        bad = holes > 0
        for a in (cov, var_x, var_y):
            a[bad] = np.nan
        return cov, var_x, var_y

    return ctx.cached(("context_moments", window), make)


def rolling_correlation(ctx: BarContext, window: int) -> np.ndarray:
    """Correlation of our one-bar returns with the context's over ``window`` bars; 0 when flat."""
    cov, var_x, var_y = _return_moments(ctx, window)
    den = np.sqrt(var_x * var_y)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(den > 0, cov / den, 0.0)
    out[~np.isfinite(cov)] = np.nan
    return np.clip(out, -1.0, 1.0, out=out)


def rolling_beta(ctx: BarContext, window: int) -> np.ndarray:
    """Beta of our one-bar returns on the context's over ``window`` bars; 0 when the context is flat."""
    cov, _, var_y = _return_moments(ctx, window)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(var_y > 0, cov / var_y, 0.0)
    out[~np.isfinite(cov)] = np.nan
    return out
