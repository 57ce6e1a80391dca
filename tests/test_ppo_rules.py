"""The account's rules inside the PPO environment (issue 13): a breach ends the episode with its
penalty, the observation carries the room to each limit, the cap follows the account, the
15:10 CT flatten, randomised starts, and the environment breaching on the same bar as the
backtest's judge (``apply_rules``) for the same path; the serving runtime reads the room
from the request's account."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from trademl.data.synthetic import synthetic_bars
from trademl.errors import TradeMLError
from trademl.market.actions import BUY, HOLD
from trademl.market.contracts import contract_spec
from trademl.market.execution import ExecutionModel
from trademl.models.ppo.algorithms import greedy
from trademl.models.ppo.env import MarketData, TradingCore, TradingEnvironment
from trademl.models.ppo.observation import FeatureNormalizer, ObservationSpec
from trademl.models.ppo.rewards import RewardSettings
from trademl.risk.account import apply_rules, trading_days
from trademl.risk.limits import AccountLimits, room_shares
from trademl.risk.rules import rules_for
from trademl.segments import segment_ids

# Daily floor 49,500 (a $500 daily limit), trailing threshold 48,000.
RULES = rules_for("topstep-50k", daily_loss_limit=500)
NQ_COST = 2.25 + 5.00  # commission + one tick ($5) per contract per side


def falling_bars() -> pd.DataFrame:
    """One segment at 08:30 CT (2024-03-05): flat for three bars, then 5 points lower every bar."""
    close = np.array([100, 100, 100, 99, 94, 89, 84, 79, 74, 69], float)
    open_ = np.r_[close[0], close[:-1]]
    stamps = pd.date_range("2024-03-05 14:30", periods=len(close), freq="1min", tz="UTC", name="timestamp")
    return pd.DataFrame({"open": open_, "high": np.maximum(open_, close), "low": np.minimum(open_, close),
                         "close": close}, index=stamps)


def rules_env(bars, symbol="NQ", max_position=2, rules=RULES, observe=True, penalty=2000.0, start="fresh"):
    feats = np.column_stack([np.arange(len(bars), dtype=float), bars["close"].to_numpy()])
    spec = ObservationSpec(FeatureNormalizer.fit(feats, ["i", "close"], np.arange(len(bars))), 2, max_position,
                           rules.starting_balance, 500.0, rules if observe else None)
    day, flat = trading_days(bars.index, rules)
    market = MarketData.build(feats, bars["open"], bars["close"], segment_ids(bars), spec, day=day, flat=flat)
    execution = ExecutionModel(contract_spec(symbol), commission_per_side=2.25, slippage_ticks=1.0,
                               max_position=max_position)
    rewards = RewardSettings("pnl", reward_scale=10.0, breach_penalty=penalty)
    return TradingEnvironment(market, execution, spec, rewards, episode_length=100, rules=rules, account_start=start)


def test_a_daily_limit_breach_liquidates_at_that_close_pays_the_penalty_and_ends_the_episode():
    env = rules_env(falling_bars())
    env.reset(options={"start": 1})
    # bar 2: 0 -> 1 at 100, close 100: -7.25 | bar 3: 1 -> 2 at 100, close 99: -40 - 7.25
    # bars 4, 5: 2 contracts x -5 points x $20 = -200 each: equity 50,000 - 454.50 = 49,545.50
    steps = [env.step(a) for a in (BUY, BUY, HOLD, HOLD)]
    assert [s[4]["account_equity"] for s in steps] == [49_992.75, 49_945.50, 49_745.50, 49_545.50]
    assert not any(s[2] for s in steps)
    # the room inputs: (49,545.50 - 48,000) / 2,000 and (49,545.50 - 49,500) / 500
    np.testing.assert_allclose(steps[-1][0][-2:], [0.77275, 0.091], rtol=1e-6)
    obs, reward, terminated, truncated, info = env.step(HOLD)  # bar 6: -200 -> 49,345.50 <= 49,500
    assert terminated and not truncated and info["breached"]
    assert info["pnl"] == pytest.approx(-200 - 2 * NQ_COST)  # liquidated at the close: one more fill
    assert info["account_equity"] == pytest.approx(49_331.0)
    assert info["position"] == 2 and env.core.position[0] == 0  # held during the bar, flat after it
    assert reward == pytest.approx((-200 - 2 * NQ_COST) / 10 - 2000 / 10)
    np.testing.assert_allclose(obs[-2:], [(49_331 - 48_000) / 2_000, 0.0], rtol=1e-6)


def test_the_environment_breaches_on_the_bar_the_backtests_judge_does():
    env = rules_env(falling_bars())
    env.reset(options={"start": 1})
    target = np.zeros(10)
    for t, a in zip(range(1, 6), (BUY, BUY, HOLD, HOLD, HOLD)):
        target[t] = env.step(a)[4]["position"] if t < 5 else 2
    bars = falling_bars()
    res = apply_rules(bars.index, target, bars["open"], bars["close"], env.core.execution, RULES)
    assert res.breached == "daily_loss_limit" and res.breach_bar == 6
    assert res.equity[6] == pytest.approx(49_331.0)


def test_over_many_days_the_environment_and_apply_rules_agree_bar_for_bar():
    """Random actions on 12 days of synthetic NQ, accounts carried across the daily break: the
    environment's breach bar is apply_rules' for the same targets, for every account."""
    from trademl.models.ppo.account_eval import trade_accounts
    from trademl.models.ppo.train import prepare_market
    from trademl.config import Config

    bars = synthetic_bars(12 * 1380, seed=5, daily_vol=0.03)
    cfg = Config()
    cfg.ppo.account_rules, cfg.ppo.window, cfg.ppo.eval_fraction = "topstep-50k", 2, 0.95
    p = prepare_market(bars, cfg)
    market = p.market("eval")
    firsts = market.starts[np.r_[True, np.diff(p.segments[market.starts]) != 0]]
    rng = np.random.default_rng(3)
    targets, breach_bar = trade_accounts(greedy(lambda o: rng.random((len(o), 3)) * [0.2, 1, 0.6]), p, market, p.rules,
                                         firsts[:6], firsts)
    assert (breach_bar >= 0).sum() >= 3  # the test means something: most accounts breach
    for a, start in enumerate(firsts[:6]):
        sl = slice(start, None)
        res = apply_rules(p.index[sl], targets[a, start - p.split:], p.open[sl], p.close[sl], p.execution, p.rules,
                          p.segments[sl])
        if breach_bar[a] < 0:
            assert res.breached is None
        else:
            assert res.breached is not None and start + res.breach_bar == breach_bar[a], (a, res.summary())


def test_the_cap_follows_the_account_and_the_smaller_limit_wins():
    bars = falling_bars()
    assert rules_env(bars, "NQ", max_position=10).core.cap == 5  # topstep-50k: 5 minis
    assert rules_env(bars, "MNQ", max_position=100).core.cap == 50  # and 50 micros
    assert rules_env(bars, "MNQ", max_position=3).core.cap == 3  # the configured cap, when smaller
    flat = falling_bars().assign(open=100.0, high=100.0, low=100.0, close=100.0)
    env = rules_env(flat, "NQ", max_position=10, penalty=0.0)
    env.reset(options={"start": 1})
    assert [env.step(BUY)[4]["position"] for _ in range(7)] == [1, 2, 3, 4, 5, 5, 5]


@pytest.mark.parametrize("day, utc_flat", [("2024-01-16", "21:10"), ("2024-07-16", "20:10")])
def test_positions_go_flat_at_15_10_central_in_winter_and_summer(day, utc_flat):
    """15:10 CT is 21:10 UTC in January, 20:10 UTC in July: the position held before is closed
    at the open of that bar and buying inside the window does nothing."""
    stamps = pd.date_range(pd.Timestamp(f"{day} {utc_flat}", tz="UTC") - pd.Timedelta(minutes=5), periods=10,
                           freq="1min", name="timestamp")
    close = np.full(10, 100.0)
    bars = pd.DataFrame({"open": close, "high": close, "low": close, "close": close}, index=stamps)
    env = rules_env(bars, penalty=0.0)
    env.reset(options={"start": 1})
    held = [env.step(BUY)[4]["position"] for _ in range(8)]  # bars 2..9; bar 5 opens at 15:10 CT
    assert held == [1, 2, 2, 0, 0, 0, 0, 0]


def test_without_room_inputs_the_observation_is_the_plain_agents():
    bars = falling_bars()
    assert rules_env(bars, observe=False).observation_space.shape[0] + 2 == rules_env(bars).observation_space.shape[0]


def test_random_starts_leave_each_limit_a_little_and_spread_over_the_evaluation():
    limits = AccountLimits(RULES, 5000)
    limits.random_restart(np.arange(5000), day=np.zeros(5000, np.int64), rng=np.random.default_rng(0))
    room = limits.room(limits.base)
    assert room.min() >= 0.02 - 1e-9 and (room < 0.1).any(axis=0).all()  # some start right by each limit
    assert room[:, 0].std() > 0.1 and room[:, 1].std() > 0.1
    # consistent balances: the day started at or under the peak, the peak at or over the start
    assert (limits.start_of_day <= limits.peak_eod + 1e-9).all() and (limits.peak_eod >= 50_000).all()


def test_a_new_day_starts_from_the_last_close_and_raises_the_peak_which_locks_at_the_start():
    limits = AccountLimits(RULES, 1)
    limits.restart([0], day=np.array([10]))
    limits.open_day(np.array([11]), np.array([51_200.0]))  # day 10 closed at 51,200
    assert limits.start_of_day[0] == 51_200 and limits.peak_eod[0] == 51_200
    np.testing.assert_allclose(limits.room(np.array([51_000.0])), [[(51_000 - 49_200) / 2_000, 300 / 500]])
    limits.open_day(np.array([12]), np.array([53_000.0]))  # the threshold would be 51,000: locked at 50,000
    assert RULES.trailing_threshold(limits.peak_eod)[0] == 50_000
    limits.open_day(np.array([12]), np.array([40_000.0]))  # the same day again: nothing rolls
    assert limits.start_of_day[0] == 53_000
    assert room_shares(RULES, 49_000.0, 50_000.0, 50_000.0).tolist() == [0.5, 0.0]


def test_rules_need_the_bars_trading_days():
    bars = falling_bars()
    env = rules_env(bars)
    core = env.core
    market = MarketData.build(np.zeros((10, 2)) + np.arange(10)[:, None], bars["open"], bars["close"],
                              segment_ids(bars), core.spec)
    with pytest.raises(TradeMLError, match="trading days"):
        TradingCore(market, core.execution, core.spec, core.rewards, rules=RULES)


# ----------------------------------------------------------------------------- an agent trained under rules


@pytest.fixture(scope="module")
def rules_agent(tmp_path_factory):
    """A tiny agent trained under topstep-50k on synthetic NQ, stored with its dataset."""
    from trademl.config import load_config
    from trademl.data.dataset import dataset_from_bars
    from trademl.models.kinds.ppo import PPOAgent

    root = tmp_path_factory.mktemp("rules-agent")
    cfg = load_config(None, {"data": {"extra_feature_columns": ["edge"]}, "paths": {"model_root": str(root / "models")},
                             "ppo": {"total_timesteps": 512, "n_envs": 16, "n_steps": 16, "batch_size": 64,
                                     "n_epochs": 1, "account_rules": "topstep-50k",
                                     "checkpoint_dir": str(root / "ckpt")}})
    ds = dataset_from_bars(synthetic_bars(3_000, seed=11, edge_ic=0.15, symbol="NQ"), cfg)
    agent = PPOAgent(cfg).fit(ds)
    agent.save()
    return cfg, ds, agent


def test_a_rules_agent_stores_its_rules_and_observes_its_room_in_serving_as_in_training(rules_agent):
    from trademl.models.kinds.ppo import PPORuntime
    from trademl.models.ppo.train import prepare_market
    from trademl.models.store import ModelStore

    cfg, ds, agent = rules_agent
    runtime = PPORuntime.load(ModelStore(cfg.paths.model_root).load("ppo"))
    spec = runtime.spec
    assert spec.rules.name == "topstep-50k" and spec.initial_balance == 50_000 and spec.max_position == 5
    assert spec.obs_dim == spec.window * spec.n_features + 13 + 2
    assert agent.metrics["account"]["rules"] == "topstep-50k" and agent.metrics["account"]["accounts"] >= 1
    p = prepare_market(ds.bars(), cfg, features=ds.X, schema=ds.manifest["feature_schema"], symbol=ds.symbol)
    core = TradingCore(p.market("eval"), p.execution, p.obs_spec, p.rewards, 4, seed=2, rules=p.rules,
                       account_start="random")
    core.reset()
    for a in ((BUY,) * 4, (BUY, HOLD, BUY, HOLD), (HOLD,) * 4):
        core.step(np.array(a))
    t, w = core.t, runtime.window
    raw = np.stack([p.features[i - w + 1: i + 1] for i in t])
    room = core.limits.room(core.account_equity)
    obs = runtime.observation(raw, core.position, core.balance, core.unrealized_pnl, core.recent, room)
    np.testing.assert_allclose(obs, core.observe(), atol=1e-6)
    with pytest.raises(TradeMLError, match="room"):
        runtime.observation(raw, core.position, core.balance, core.unrealized_pnl, core.recent, -room)


def test_the_predictor_feeds_a_rules_agent_the_room_of_the_requests_account(rules_agent):
    from trademl.predict.ensemble import EnsemblePredictor

    cfg, ds, _ = rules_agent
    predictor = EnsemblePredictor(cfg.paths.model_root, cfg, record=False)
    snapshot = ds.snapshot(len(ds.frame) - 1)
    account = {"rules": "topstep-50k", "balance": 50_000.0}
    fresh = predictor.ensemble_predict({**snapshot, "account": account})
    # Only the daily room changes (the day started $950 higher): the policy sees it.
    near = predictor.ensemble_predict({**snapshot, "account": {**account, "start_of_day_balance": 50_950.0}})
    assert near["risk"]["loss_to_breach"]["daily_loss_limit"] == 50.0
    assert fresh["ppo_buy_prob"] != near["ppo_buy_prob"]
    # No account (the same balance): a fresh account's room, so the same answer.
    assert predictor.ensemble_predict({**snapshot, "balance": 50_000.0})["ppo_buy_prob"] == fresh["ppo_buy_prob"]


def test_under_rules_the_walk_forward_agent_observes_its_accounts_room_carried_across_days_and_folds():
    from trademl.backtest.walkforward import walk_forward_backtest
    from trademl.config import load_config
    from trademl.data.dataset import dataset_from_bars

    cfg = load_config(None, {"data": {"extra_feature_columns": ["edge"]},
                             "ppo": {"total_timesteps": 1024, "n_envs": 8, "n_steps": 64, "batch_size": 256,
                                     "n_epochs": 1, "torch_threads": 1, "account_rules": "topstep-50k"},
                             "backtest": {"n_folds": 2, "confidence_threshold": 0.2}})
    bars = synthetic_bars(9_000, seed=5, edge_ic=0.1, symbol="NQ", daily_vol=0.03)
    result = walk_forward_backtest(dataset_from_bars(bars, cfg), cfg, models=["ppo"], account="topstep-50k")
    out = result.outputs
    trailing, daily = out["ppo_seen_room_trailing"].to_numpy(), out["ppo_seen_room_daily"].to_numpy()
    seen = out["ppo_seen_ensemble_position"].to_numpy()
    assert trailing[0] == 1.0 and daily[0] == 1.0  # a fresh account at the first test bar
    assert (trailing >= 0).all() and (daily >= 0).all()
    # Flat through a day's first bar, the account has lost nothing yet that day: a full daily room.
    day = trading_days(result.bars.index, RULES)[0]
    first = np.flatnonzero(np.r_[True, day[1:] != day[:-1]])[1:]
    flat = first[(seen[first] == 0) & (seen[first - 1] == 0)]
    assert len(flat) >= 2 and np.allclose(daily[flat], 1.0)
    # Across days (and the fold boundary) the trailing room goes on: it is not reset to 1.
    assert np.abs(trailing[flat] - 1.0).max() > 0.01


def test_accounts_started_near_a_limit_breach_when_they_trade_and_never_when_flat():
    from trademl.config import Config
    from trademl.models.ppo.account_eval import evaluate_near_limits
    from trademl.models.ppo.train import prepare_market

    cfg = Config()
    cfg.ppo.account_rules, cfg.ppo.window, cfg.ppo.eval_fraction = "topstep-50k", 2, 0.5
    p = prepare_market(synthetic_bars(8 * 1380, seed=5, daily_vol=0.03), cfg)

    def always(action):
        return lambda obs: np.full(len(obs), action)

    flat = evaluate_near_limits(always(HOLD), p, p.rules)
    assert flat["accounts"] == 5 * 4 and flat["breach_share"] == 0.0  # four held-out sessions, five each
    full_long = evaluate_near_limits(always(BUY), p, p.rules)  # 5 NQ contracts held all session
    assert full_long["breach_share"] >= 0.5
    lo, hi = full_long["breach_interval_95"]
    assert lo <= full_long["breach_share"] <= hi
