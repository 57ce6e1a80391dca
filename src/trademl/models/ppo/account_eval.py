"""The PPO agent on held-out bars as a prop-firm account: how often would it breach?

Evaluation accounts are opened on the held-out span, one at the first decision bar of each
of up to ``max_accounts`` held-out trading segments spread evenly over it. Each is traded by
the deterministic agent (``act``: observations -> its actions, ``algorithms.deterministic_actions``)
under the rules, in the training
environment's dynamics (cap, 15:10 CT flatten, breach liquidation), carried day after day
(the broker flat at each segment start, the balances going on) until it breaches or the span
ends. The environment decides what the agent saw; the verdict of each account's path comes
from ``trademl.risk.account.apply_rules``, the backtest's judge (a test checks both breach on
the same bar), so a pass ends an account too.

Accounts opened on neighbouring days share most of their bars: they are not independent
draws, and the interval given is a plain binomial one, narrower than the truth.
"""

from __future__ import annotations

import numpy as np

from trademl.models.ppo.env import TradingCore
from trademl.risk.account import apply_rules
from trademl.risk.rules import AccountRules
from trademl.segments import segment_start_mask


def evaluate_under_rules(act, prepared, rules: AccountRules, max_accounts: int = 40) -> dict:
    """Breach and pass shares of evaluation accounts on the held-out span (see the module doc)."""
    market = prepared.market("eval", rules)
    firsts = market.starts[segment_start_mask(prepared.segments[market.starts])]  # a segment's first decision bar
    opens = firsts[np.unique(np.linspace(0, len(firsts) - 1, min(max_accounts, len(firsts))).round().astype(int))]
    targets, _ = trade_accounts(act, prepared, market, rules, opens, firsts)
    verdicts = [_verdict(prepared, rules, start, targets[a, start - prepared.split:]) for a, start in enumerate(opens)]
    return _summary(rules, verdicts) | {"near_limits": evaluate_near_limits(act, prepared, rules)}


def evaluate_near_limits(act, prepared, rules: AccountRules, per_session: int = 5, seed: int = 0) -> dict:
    """The share of accounts that breach within one held-out session when they start it anywhere
    along an evaluation (``AccountLimits.random_restart``, as in training: each limit keeping at
    least 2% of its allowance), ``per_session`` of them at the first decision bar of every
    held-out session. A fresh account is rarely near a limit; this is where the rules bite.
    The environment's breach is the verdict (it agrees with ``apply_rules``, tested)."""
    market = prepared.market("eval", rules)
    firsts = market.starts[segment_start_mask(prepared.segments[market.starts])]
    opens = np.repeat(firsts, per_session)
    _, breach_bar = trade_accounts(act, prepared, market, rules, opens, firsts, account_start="random",
                                   carry=False, seed=seed)
    share, interval = _share_with_interval(int((breach_bar >= 0).sum()), len(opens))
    return {"accounts": len(opens), "breach_share": share, "breach_interval_95": interval}


def trade_accounts(act, prepared, market, rules, opens: np.ndarray, firsts: np.ndarray, *,
                   account_start: str = "fresh", carry: bool = True, seed: int | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """([accounts, held-out bars] target positions decided at each close (0 where none was),
    the bar each account breached on in the environment, -1 if it did not). With ``carry`` an
    account goes on at the next session when its own ends; without, it ends with it."""
    k, split = len(opens), prepared.split
    core = TradingCore(market, prepared.execution, prepared.obs_spec, prepared.rewards, k,
                       episode_length=np.iinfo(np.int64).max, seed=seed, rules=rules, account_start=account_start,
                       action_mode=prepared.action_mode)
    core.reset(starts=opens)
    targets = np.zeros((k, len(prepared.close) - split), np.int32)
    live = np.ones(k, bool)
    breach_bar = np.full(k, -1)
    while live.any():
        t = core.t.copy()
        r = core.step(act(core.observe()))
        targets[live, t[live] - split] = r.position[live]
        breach_bar[live & r.breached] = core.t[live & r.breached]
        live &= ~r.breached
        ended = live & r.terminated  # its segment ended: the account goes on at the next one, if any
        nxt = np.searchsorted(firsts, core.t[ended], side="right")
        more = (nxt < len(firsts)) & carry
        idx = np.flatnonzero(ended)
        live[idx[~more]] = False
        if more.any():
            core.continue_accounts(idx[more], firsts[nxt[more]])
        parked = ~live & (r.terminated | r.breached)
        if parked.any():  # done accounts step on harmlessly from their own start; nothing is recorded
            core.reset(parked, starts=opens[parked])
    return targets, breach_bar


def _verdict(prepared, rules: AccountRules, start: int, target: np.ndarray) -> dict:
    sl = slice(start, None)
    res = apply_rules(prepared.index[sl], target, prepared.open[sl], prepared.close[sl], prepared.execution, rules,
                      prepared.segments[sl])
    end = len(res.index) - 1 if res.end_bar is None else res.end_bar
    return {"breached": res.breached, "passed": res.passed, "trading_days": res.trading_days,
            "pnl": float(res.equity[end] - rules.starting_balance)}


def _summary(rules: AccountRules, verdicts: list[dict]) -> dict:
    n = len(verdicts)
    breached = [v for v in verdicts if v["breached"]]
    share, interval = _share_with_interval(len(breached), n)
    return {
        "rules": rules.name, "accounts": n,
        "breach_share": share,
        "breach_interval_95": interval,
        "breached_by": {r: sum(v["breached"] == r for v in breached) for r in ("trailing_max_loss", "daily_loss_limit")},
        "pass_share": round(sum(v["passed"] for v in verdicts) / n, 4) if n else 0.0,
        "median_days_to_breach": float(np.median([v["trading_days"] for v in breached])) if breached else None,
        "mean_pnl": round(float(np.mean([v["pnl"] for v in verdicts])), 2) if n else 0.0,
        "note": "accounts opened on neighbouring held-out days overlap: not independent draws",
    }


def _share_with_interval(hits: int, n: int) -> tuple[float, list[float]]:
    """(hits / n, its plain binomial 95% interval), rounded; 0 and [0, 0] with no accounts."""
    share = hits / n if n else 0.0
    half = 1.96 * float(np.sqrt(share * (1 - share) / n)) if n else 0.0
    return round(share, 4), [round(max(0.0, share - half), 4), round(min(1.0, share + half), 4)]
