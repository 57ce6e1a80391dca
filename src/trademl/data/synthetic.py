"""A synthetic futures market with a planted edge of known strength.

Minute bars on CME Globex hours (23:00 -> 22:00 UTC, Sunday evening to Friday), with an
intraday U-shaped volume and volatility profile, two volatility regimes, prices on the
tick grid, and a column ``edge`` known at the close of bar t whose Spearman rank
correlation with the forward ``edge_horizon``-bar log return is ``edge_ic``.

With ``edge_ic=0`` the market is a heteroskedastic random walk and nothing can be
learned from it: tests use it to prove the pipeline invents no edge.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from trademl.market.contracts import contract_spec

SESSION_MINUTES = 23 * 60  # Globex: 23:00 UTC previous day to 22:00 UTC


def _session_stamps(n_bars: int, start: str) -> pd.DatetimeIndex:
    """n_bars minute stamps on Globex hours, Monday..Friday sessions."""
    day = pd.Timestamp(start, tz="UTC").normalize()
    chunks, total = [], 0
    while total < n_bars:
        if day.day_of_week < 5:  # the session that ends on this weekday at 22:00
            open_ = day - pd.Timedelta(hours=1)
            chunks.append(open_.value + np.arange(SESSION_MINUTES, dtype=np.int64) * 60_000_000_000)
            total += SESSION_MINUTES
        day += pd.Timedelta(days=1)
    return pd.DatetimeIndex(np.concatenate(chunks)[:n_bars], tz="UTC", name="timestamp")


def _intraday_profile(stamps: pd.DatetimeIndex) -> np.ndarray:
    """Relative activity by minute of day: peaks at the US cash open and close."""
    minute = (stamps.hour * 60 + stamps.minute).to_numpy().astype(float)
    open_peak = np.exp(-((minute - (14 * 60 + 30)) / 45.0) ** 2)
    close_peak = np.exp(-((minute - 21 * 60) / 30.0) ** 2)
    us_session = ((minute >= 14 * 60 + 30) & (minute < 21 * 60)).astype(float)
    return 0.35 + 0.5 * us_session + 1.5 * open_peak + 1.0 * close_peak


def _regimes(n: int, rng: np.random.Generator, switch_prob: float = 1 / 3000) -> np.ndarray:
    """Two-state Markov volatility regime: 1.0 (calm) or 2.2 (stressed)."""
    flips = rng.random(n) < switch_prob
    state = np.cumsum(flips) % 2
    return np.where(state == 1, 2.2, 1.0)


def edge_beta(edge_ic: float, horizon: int) -> float:
    """Loading of the next bar's shock on the edge, so corr(edge_t, R_t..t+h) hits edge_ic.

    Spearman rho_s of a Gaussian pair maps to Pearson rho = 2 sin(pi rho_s / 6); the h-bar
    forward return carries one loaded shock and h unit shocks: rho = b / sqrt(h + b^2).
    """
    rho = 2 * math.sin(math.pi * edge_ic / 6)
    if abs(rho) >= 1:
        raise ValueError("edge_ic must be in (-1, 1)")
    return math.copysign(math.sqrt(horizon * rho**2 / (1 - rho**2)), rho)


def _calibrated_beta(sigma: np.ndarray, edge_ic: float, horizon: int, seed: int) -> float:
    """The Gaussian loading, corrected for this volatility path.

    Volatility regimes and the intraday profile make returns a scale mixture, which
    lowers rank correlation below the Gaussian value. A few secant steps on an independent
    draw with the same volatility path find the loading whose population IC is edge_ic,
    without looking at the noise that is actually used.
    """
    rng = np.random.default_rng([seed, 99])
    sigma = np.tile(sigma, max(1, 600_000 // len(sigma)))  # a larger draw: less noise in b
    n = len(sigma)
    e, w = rng.standard_normal(n), rng.standard_normal(n)

    def ic(b: float) -> float:
        z = w.copy()
        z[1:] += b * e[:-1]
        r = sigma * z / math.sqrt(1 + b * b)
        fwd = np.convolve(r, np.ones(horizon), "valid")[1:]  # r[t+1..t+h]
        return rank_ic(e[: len(fwd)], fwd)

    b0 = edge_beta(edge_ic, horizon)
    b1 = b0 * 1.1
    f0, f1 = ic(b0) - edge_ic, ic(b1) - edge_ic
    for _ in range(4):
        if abs(f1) < 1e-4 or f1 == f0:
            break
        b0, b1, f0 = b1, b1 - f1 * (b1 - b0) / (f1 - f0), f1
        f1 = ic(b1) - edge_ic
    return b1


def synthetic_bars(
    n_bars: int = 200_000,
    *,
    seed: int = 0,
    edge_ic: float = 0.0,
    edge_horizon: int = 5,
    symbol: str = "NQ",
    start: str = "2024-01-02",
    start_price: float = 16_000.0,
    daily_vol: float = 0.012,
) -> pd.DataFrame:
    """Bars frame (UTC index; open, high, low, close, volume, edge) reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    spec = contract_spec(symbol)
    stamps = _session_stamps(n_bars, start)
    profile = _intraday_profile(stamps)
    regime = _regimes(n_bars, rng)
    # Per-minute volatility: daily vol spread over the session, shaped by the profile.
    sigma = daily_vol / math.sqrt(SESSION_MINUTES) * np.sqrt(profile / profile.mean()) * regime
    # sigma is the same for all h bars of a horizon in expectation; normalise the shocks by it
    # so that rank correlation is not diluted by regime changes.
    edge = rng.standard_normal(n_bars)
    shock = rng.standard_normal(n_bars)
    b = _calibrated_beta(sigma, edge_ic, edge_horizon, seed) if edge_ic else 0.0
    # r[t] = return of bar t (close[t-1] -> close[t]); it loads on the edge seen at t-1.
    z = shock.copy()
    z[1:] += b * edge[:-1]
    z /= math.sqrt(1 + b * b)
    log_ret = sigma * z
    log_ret[0] = 0.0
    close = start_price * np.exp(np.cumsum(log_ret))
    close = np.round(close / spec.tick_size) * spec.tick_size

    open_ = np.empty(n_bars)
    open_[0] = close[0]
    open_[1:] = close[:-1]
    # Opening gap at each session start (a separate auction): a small extra jump.
    new_session = np.r_[True, np.diff(stamps.as_unit("ns").asi8) > 60_000_000_000]
    gap = np.where(new_session, rng.standard_normal(n_bars) * sigma * 5, 0.0)
    open_ = np.round(open_ * np.exp(gap) / spec.tick_size) * spec.tick_size
    body_hi = np.maximum(open_, close)
    body_lo = np.minimum(open_, close)
    wick = np.abs(rng.standard_normal((2, n_bars))) * sigma * close * 0.6
    high = np.round((body_hi + wick[0]) / spec.tick_size) * spec.tick_size
    low = np.round((body_lo - wick[1]) / spec.tick_size) * spec.tick_size
    high = np.maximum(high, body_hi)
    low = np.minimum(low, body_lo)
    # Volume follows the same profile and regime, with Poisson noise (integer contracts).
    lam = 400.0 * profile * regime
    volume = rng.poisson(lam).astype(np.float64)

    bars = pd.DataFrame(
        {"open": open_, "high": high, "low": low, "close": close, "volume": volume, "edge": edge},
        index=stamps,
    )
    bars.attrs["symbol"] = symbol
    bars.attrs["source"] = f"synthetic(seed={seed}, edge_ic={edge_ic}, edge_horizon={edge_horizon})"
    return bars


def flip_edge(bars: pd.DataFrame, at: float) -> pd.DataFrame:
    """``bars`` whose planted edge changes sign from the share ``at`` of the bars on (0 < at < 1):
    ``edge`` is negated there, so its IC with the forward return is -edge_ic after the flip and the
    prices stay the same. A regime change a model trained before it gets exactly wrong, the
    market `trademl retrain` has to notice."""
    if not 0 < at < 1:
        raise ValueError(f"the flip must fall inside the bars (0 < at < 1), not {at!r}")
    out = bars.copy()
    start = int(len(out) * at)
    out.iloc[start:, out.columns.get_loc("edge")] *= -1.0
    out.attrs = {**bars.attrs, "source": f"{bars.attrs.get('source', 'synthetic')}, edge flipped at row {start}"}
    return out


def forward_log_return(close: np.ndarray, horizon: int) -> np.ndarray:
    """log(close[t+h] / close[t]); NaN for the last h bars."""
    out = np.full(len(close), np.nan)
    out[:-horizon] = np.log(close[horizon:] / close[:-horizon])
    return out


def rank_ic(signal: np.ndarray, target: np.ndarray) -> float:
    """Spearman rank correlation over the rows where both are finite."""
    ok = np.isfinite(signal) & np.isfinite(target)
    a = pd.Series(signal[ok]).rank().to_numpy()
    b = pd.Series(target[ok]).rank().to_numpy()
    return float(np.corrcoef(a, b)[0, 1])
