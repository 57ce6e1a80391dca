"""The synthetic market: planted edge measured at its strength; none invented without it."""

import numpy as np
import pytest

from trademl.segments import segment_ids
from trademl.data.synthetic import forward_log_return, rank_ic, synthetic_bars


@pytest.fixture(scope="module")
def edged():
    return synthetic_bars(200_000, seed=11, edge_ic=0.1, edge_horizon=5)


def test_planted_rank_correlation_is_measured(edged):
    ic = rank_ic(edged["edge"].to_numpy(), forward_log_return(edged["close"].to_numpy(), 5))
    assert ic == pytest.approx(0.1, abs=0.02)


def test_no_edge_means_no_information():
    bars = synthetic_bars(200_000, seed=12, edge_ic=0.0)
    ic = rank_ic(bars["edge"].to_numpy(), forward_log_return(bars["close"].to_numpy(), 5))
    assert abs(ic) < 0.01


def test_edge_is_known_at_the_close_not_before(edged):
    # the edge at t says nothing about the return that already happened into t
    past = np.r_[np.nan, np.diff(np.log(edged["close"].to_numpy()))]
    assert abs(rank_ic(edged["edge"].to_numpy(), past)) < 0.01


def test_reproducible_from_seed():
    a = synthetic_bars(5_000, seed=3, edge_ic=0.1)
    b = synthetic_bars(5_000, seed=3, edge_ic=0.1)
    c = synthetic_bars(5_000, seed=4, edge_ic=0.1)
    assert a.equals(b)
    assert not a["close"].equals(c["close"])


def test_bars_are_consistent_and_on_the_tick_grid(edged):
    o, h, l, c = (edged[k].to_numpy() for k in ("open", "high", "low", "close"))
    assert (h >= np.maximum(o, c)).all() and (l <= np.minimum(o, c)).all() and (l > 0).all()
    for x in (o, h, l, c):
        assert np.allclose(np.round(x / 0.25) * 0.25, x)
    assert edged.index.is_monotonic_increasing and edged.index.tz is not None


def test_sessions_weekends_and_seasonality(edged):
    seg = segment_ids(edged, max_gap_minutes=15)
    # one segment per Globex session of 23 hours
    sizes = np.bincount(seg)
    assert (sizes[:-1] == 23 * 60).all()
    assert not (edged.index.day_of_week == 5).any()  # no Saturday bars
    minute = edged.index.hour * 60 + edged.index.minute
    us_open = edged["volume"][(minute >= 14 * 60 + 30) & (minute < 15 * 60)].mean()
    overnight = edged["volume"][(minute >= 2 * 60) & (minute < 6 * 60)].mean()
    assert us_open > 2 * overnight


def test_volatility_regimes_exist(edged):
    r = np.diff(np.log(edged["close"].to_numpy()))
    day_vol = np.array([c.std() for c in np.array_split(r, 140)])
    assert day_vol.max() / day_vol.min() > 1.8
