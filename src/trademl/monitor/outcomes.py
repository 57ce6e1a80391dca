"""Every logged prediction joined to what the market did next, and each model's calls scored.

The join, as-of and without look-ahead:

- A prediction made at time T (the log's ``ts_utc``) is judged as a decision taken at T:
  its trade fills at the open of the first bar that opens at or after T, the entry bar e,
  and exits h bars later at the open of bar e+h, exactly the trade that
  ``trademl.data.labels`` prices at the row e-1 (a decision at the close of bar t fills at
  the open of t+1), through the execution model's slippage and commission. Made exactly at
  a bar's close, the prediction enters at the next bar's open; made mid-bar, it waits for
  the next bar, because the bar in progress opened before it. No bar that opened before T
  is used, and no bar after e+h.
- A prediction computed from bars (``decision_bar`` logged: the last bar the models saw)
  is a decision at that bar's close (its stamp is that bar's open); if the request named a
  later time, the trade still waits for the first bar opening at or after it.
- The decision bar (whose features the models saw) is the last bar closed at or before T.
- Where the window crosses a gap or a contract roll, or runs past the bars we have, the
  outcome is unknown (NaN): pending, never guessed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from trademl.config import resolve_config
from trademl.data.bars import median_bar_minutes
from trademl.data.labels import make_labels
from trademl.segments import segment_ids
from trademl.market.execution import ExecutionModel
from trademl.models.calibration import confidence_bins, table_calibration_error

MODELS = ("lgb_5m", "lgb_30m", "lstm", "ppo", "ensemble")
# The horizon each model's confidence is about: where its calibration is judged.
NATIVE_HORIZON = {"lgb_5m": 5, "lgb_30m": 30, "lstm": 5, "ppo": 5, "ensemble": 5}
_DIRECTION = {"BUY": 1, "SELL": -1, "HOLD": 0}


def join_outcomes(predictions: pd.DataFrame, bars: pd.DataFrame, execution: ExecutionModel, *,
                  horizons=(5, 30), max_gap_minutes: float = 15) -> pd.DataFrame:
    """Per prediction (same index): decision_bar, entry_bar and, per horizon h, the net dollar
    P&L of one contract long (``pnl_long_h``) and short (``pnl_short_h``), NaN while unknown."""
    n = len(predictions)
    out = pd.DataFrame(index=predictions.index)
    if len(bars) == 0 or n == 0:
        out["decision_bar"] = pd.Series(pd.NaT, index=predictions.index, dtype="datetime64[ns, UTC]")
        out["entry_bar"] = out["decision_bar"]
        for h in horizons:
            out[f"pnl_long_{h}"] = out[f"pnl_short_{h}"] = np.nan
        return out
    opens = bars.index.as_unit("ns").asi8
    bar_ns = int(round(median_bar_minutes(bars) * 60e9)) if len(bars) > 1 else 60_000_000_000
    closes = opens + bar_ns
    ts = _ns(predictions["ts_utc"])
    logged_bar = _ns(predictions["decision_bar"]) if "decision_bar" in predictions else np.full(n, _NAT)

    decision = np.searchsorted(closes, ts, side="right") - 1  # last bar closed at or before T
    row = np.searchsorted(opens, ts, side="left") - 1  # labels row: its next bar opens at or after T
    has_bar = logged_bar != _NAT
    if has_bar.any():
        at = np.searchsorted(opens, logged_bar[has_bar])
        found = (at < len(opens)) & (opens[np.minimum(at, len(opens) - 1)] == logged_bar[has_bar])
        decision[has_bar] = np.where(found, at, -1)
        # a decision at that bar's close, but never filled before the request's own time
        row[has_bar] = np.where(found, np.maximum(at, row[has_bar]), -1)
    undefined = (ts == _NAT) & ~has_bar
    decision[undefined] = row[undefined] = -1

    labels = make_labels(bars, segment_ids(bars, max_gap_minutes), execution, horizons=tuple(horizons))
    rt_cost = execution.round_trip_cost
    index = bars.index
    out["decision_bar"] = _stamps_at(index, decision)
    out["entry_bar"] = _stamps_at(index, np.where(row >= 0, row + 1, -1))
    for h in horizons:
        pnl_long = labels[f"pnl_long_{h}"].to_numpy(np.float64)
        taken = np.where(row >= 0, pnl_long[np.maximum(row, 0)], np.nan)
        out[f"pnl_long_{h}"] = taken
        out[f"pnl_short_{h}"] = -(taken + rt_cost) - rt_cost  # the same gross move, the other way, paying costs again
    return out


_NAT = np.iinfo(np.int64).min


def _ns(column) -> np.ndarray:
    stamps = pd.DatetimeIndex(pd.to_datetime(column, utc=True))
    return stamps.as_unit("ns").asi8.copy()


def _stamps_at(index: pd.DatetimeIndex, positions: np.ndarray) -> pd.DatetimeIndex:
    valid = (positions >= 0) & (positions < len(index))
    values = np.where(valid, index.as_unit("ns").asi8[np.clip(positions, 0, len(index) - 1)], _NAT)
    return pd.DatetimeIndex(values.view("datetime64[ns]")).tz_localize("UTC")


def model_calls(predictions: pd.DataFrame) -> pd.DataFrame:
    """What each model said, read from the logged output, one row per (prediction, model):

    - ``trade``: the trade its probability is about (+1 long, -1 short, 0 none);
    - ``acts``: whether following the model means taking that trade;
    - ``prob``: the probability that trade wins, as the model states it.

    LightGBM: the win probability of the request's side (acts when above 0.5). LSTM and PPO:
    the argmax of buy/sell/hold (acts unless hold), prob = that class's probability. The
    ensemble: its recommendation and confidence_score.
    """
    rows = []
    sides = predictions["side"] if "side" in predictions else pd.Series("long", index=predictions.index)
    for idx, output, side in zip(predictions.index, predictions["output"], sides):
        if not isinstance(output, dict):
            continue  # a failed request
        side_dir = -1 if side == "short" else 1
        for kind, field in (("lgb_5m", "win_5m_prob"), ("lgb_30m", "win_30m_prob")):
            p = output.get(field)
            if p is not None:
                rows.append((idx, kind, side_dir, p > 0.5, float(p)))
        for kind in ("lstm", "ppo"):
            probs = [output.get(f"{kind}_{c}_prob") for c in ("buy", "sell", "hold")]
            if all(p is not None for p in probs):
                best = int(np.argmax(probs))
                direction = (1, -1, 0)[best]
                rows.append((idx, kind, direction, direction != 0, float(probs[best])))
        rec = output.get("ensemble_recommendation")
        if rec in _DIRECTION:
            direction = _DIRECTION[rec]
            rows.append((idx, "ensemble", direction, direction != 0, float(output.get("confidence_score", np.nan))))
    return pd.DataFrame(rows, columns=["prediction", "model", "trade", "acts", "prob"])


def trade_outcomes(calls: pd.DataFrame, outcomes: pd.DataFrame, horizons) -> pd.DataFrame:
    """``calls`` with, per horizon, the realized net P&L of the call's trade and whether it won."""
    frame = calls.copy()
    for h in horizons:
        long_ = outcomes[f"pnl_long_{h}"].reindex(frame["prediction"]).to_numpy()
        short = outcomes[f"pnl_short_{h}"].reindex(frame["prediction"]).to_numpy()
        trade = frame["trade"].to_numpy()
        pnl = np.where(trade > 0, long_, np.where(trade < 0, short, np.nan))
        frame[f"pnl_{h}"] = pnl
        frame[f"win_{h}"] = np.where(np.isfinite(pnl), (pnl > 0).astype(float), np.nan)
    return frame


def calibration_bins(prob, won, bins: int) -> pd.DataFrame:
    """Equal-count bins of stated probability: mean confidence, realized hit rate, count (the one
    reliability table, ``trademl.models.calibration``)."""
    return confidence_bins(prob, won, bins)


def calibration_error(table: pd.DataFrame) -> float:
    """Expected calibration error: count-weighted mean |confidence - hit rate| over the bins."""
    rows = table.rename(columns={"confidence": "mean_predicted", "hit_rate": "observed"}).to_dict("records")
    return table_calibration_error(rows)


def score_models(scored: pd.DataFrame, horizons, *, bins: int | None = None) -> tuple[pd.DataFrame, dict]:
    """Per (model, horizon): predictions, calls (trades taken), judged calls, hit rate, P&L of
    following the model (one contract per call), calibration error; and the bins behind it
    (None: [monitor] calibration_bins)."""
    if bins is None:
        bins = resolve_config().monitor.calibration_bins
    rows, tables = [], {}
    for model in [m for m in MODELS if m in set(scored["model"])]:
        mine = scored[scored["model"] == model]
        for h in horizons:
            pnl, won = mine[f"pnl_{h}"], mine[f"win_{h}"]
            acted = mine["acts"].astype(bool) & pnl.notna()
            about_a_trade = (mine["trade"] != 0) & won.notna()
            table = calibration_bins(mine.loc[about_a_trade, "prob"], won[about_a_trade], bins)
            tables[(model, h)] = table
            rows.append({
                "model": model, "horizon": h, "predictions": len(mine), "calls": int(mine["acts"].sum()),
                "judged": int(acted.sum()), "pending": int((mine["acts"].astype(bool) & pnl.isna()).sum()),
                "hit_rate": float(won[acted].mean()) if acted.any() else float("nan"),
                "pnl": float(pnl[acted].sum()), "pnl_per_call": float(pnl[acted].mean()) if acted.any() else float("nan"),
                "mean_confidence": float(mine.loc[about_a_trade, "prob"].mean()) if about_a_trade.any() else float("nan"),
                "calibration_error": calibration_error(table), "calibrated_on": int(about_a_trade.sum()),
            })
    return pd.DataFrame(rows), tables
