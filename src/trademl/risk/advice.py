"""The ``risk`` block of a prediction: what the account's rules allow for this trade.

Given the account the bot reports (rules preset, balance, the day's starting balance, the
highest end-of-day balance, contracts open), the decision bar's close and ATR, and the
calibrated win probability of the recommended side (LightGBM's, for the 5-bar horizon first):

* ``loss_to_breach``: dollars from live equity (balance + unrealized P&L) to each limit;
* ``stop_price`` / ``target_price``: ``[risk] stop_atr`` / ``target_atr`` ATRs from the close;
* ``max_contracts_allowed``: the rules' cap less the contracts already open;
* ``suggested_contracts``: fractional Kelly of the loss budget (``trademl.risk.sizing``), never
  a size whose stop would breach the nearer limit;
* ``var_95``: a Gaussian Value at Risk of the suggested position over the horizon, parametric
  from the LSTM's risk head when it ran (``var_source = "lstm_risk_head"``), else with the
  bar's ATR as its per-bar standard deviation (``"atr"``; ATR is ~1.25 sigma for normal moves,
  so this overstates the risk a little: the conservative side). The risk head predicts the
  expected larger adverse excursion over its horizon in units of 3 ATR (``trademl.data.labels``);
  for a Brownian path the largest |excursion| over a span has mean sigma * sqrt(pi / 2), so
  sigma over its horizon is 3 ATR * risk / sqrt(pi / 2), scaled by sqrt(time) to this horizon.
  A risk of 1 is clipped (an excursion of 3 ATR or more): then the larger of the two sigmas;
* ``blocked``: a BUY/SELL whose one-contract stop would already breach a limit (or that the
  cap leaves no room for) becomes HOLD, and ``reason`` says why.

numpy and pydantic only: the serving path imports it.
"""

from __future__ import annotations

import math

from trademl.risk.limits import reported_balances
from trademl.risk.rules import rules_for
from trademl.risk.sizing import atr_stop, contracts, gaussian_var_es


def loss_to_breach(rules, equity: float, start_of_day: float, peak_eod: float) -> dict[str, float | None]:
    """Dollars from ``equity`` to the trailing threshold and to the daily floor (None: no daily limit)."""
    threshold = float(rules.trailing_threshold(peak_eod))
    daily = None if rules.daily_loss_limit is None else equity - float(rules.daily_floor(start_of_day))
    return {"trailing_max_loss": equity - threshold, "daily_loss_limit": daily}


def advise(account, *, recommendation: str, p_win: float | None, close: float | None, atr: float | None,
           unrealized_pnl: float, spec, cost_per_contract: float, horizon: int, risk_config,
           risk_head: tuple[float, int] | None = None) -> dict:
    """The risk block (see the module doc) for one request; ``risk_head``: the LSTM's (risk score,
    its horizon in bars) when it ran."""
    rules = rules_for(account.rules)
    equity = account.balance + unrealized_pnl
    sod, peak = reported_balances(account)
    peak = max(rules.starting_balance, peak)
    room = loss_to_breach(rules, equity, sod, peak)
    budget = min(v for v in room.values() if v is not None)
    allowed = max(0, rules.max_contracts(spec.root) - abs(account.open_contracts))
    out = {"rules": rules.name, "max_contracts_allowed": allowed, "suggested_contracts": 0, "stop_price": None,
           "target_price": None, "loss_to_breach": {k: None if v is None else round(v, 2) for k, v in room.items()},
           "var_95": None, "var_source": None, "blocked": False, "reason": None}
    if budget <= 0:
        out.update(blocked=recommendation != "HOLD", reason=f"the account is at or past a limit (${budget:,.2f} left)")
        return out
    if recommendation == "HOLD":
        return out
    side = 1 if recommendation == "BUY" else -1
    if close is None or atr is None or not atr > 0:
        out["reason"] = "no close and ATR (atr_ticks_14) for the decision bar: no stop, no size"
        return out
    stop, target = atr_stop(close, side, atr, stop_atr=risk_config.stop_atr, target_atr=risk_config.target_atr,
                            tick_size=spec.tick_size)
    out["stop_price"], out["target_price"] = stop, target
    loss_one = abs(close - stop) * spec.point_value + cost_per_contract * 2  # the stop plus a round trip of costs
    if loss_one >= budget:
        out.update(blocked=True, reason=f"one contract stopped out loses ${loss_one:,.2f}, the account has "
                                        f"${budget:,.2f} before a limit")
        return out
    if allowed == 0:
        out.update(blocked=True, reason=f"{abs(account.open_contracts)} contracts open: the rules' cap is reached")
        return out
    if p_win is None:
        out["reason"] = "no calibrated win probability (LightGBM) for this side: no size"
        return out
    payoff = abs(target - close) / abs(close - stop)
    out["suggested_contracts"] = contracts(p_win, payoff, loss_one, budget, max_contracts=allowed,
                                           kelly_share=risk_config.kelly_share)
    if out["suggested_contracts"] == 0:
        out["reason"] = f"no positive Kelly bet at p_win {p_win:.3f} and payoff {payoff:.2f}"
    sigma, out["var_source"] = horizon_sigma(atr, horizon, risk_head)
    sigma *= spec.point_value * max(out["suggested_contracts"], 1)
    out["var_95"] = round(gaussian_var_es(sigma, risk_config.var_level)[0], 2)
    return out


def horizon_sigma(atr: float, horizon: int, risk_head: tuple[float, int] | None) -> tuple[float, str]:
    """(price std over ``horizon`` bars, where it came from): the LSTM's risk head or the ATR."""
    from_atr = atr * math.sqrt(horizon)
    if risk_head is None or not 0 <= risk_head[0] <= 1 or risk_head[1] < 1:
        return from_atr, "atr"
    risk, head_horizon = risk_head
    from_head = 3 * atr * risk / math.sqrt(math.pi / 2) * math.sqrt(horizon / head_horizon)
    if risk >= 1:  # clipped: the excursion was 3 ATR or more, so the head's sigma is a floor
        return max(from_head, from_atr), "lstm_risk_head"
    return from_head, "lstm_risk_head"
