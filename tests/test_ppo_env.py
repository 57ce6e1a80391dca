"""The PPO environment: hand-computed P&L, costs and caps through the one execution model,
fills at the next open, episodes inside segments, the vectorised env, rewards."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from trademl.segments import segment_ids
from trademl.data.synthetic import synthetic_bars
from trademl.errors import TradeMLError
from trademl.market.contracts import contract_spec
from trademl.market.execution import ExecutionModel
from trademl.market.actions import BUY, HOLD, SELL
from trademl.market.broker import simulate
from trademl.models.ppo.env import MarketData, TradingCore, TradingEnvironment
from trademl.models.ppo.observation import FeatureNormalizer, ObservationSpec
from trademl.models.ppo.rewards import RewardSettings
from trademl.models.ppo.vec_env import TradingVecEnv

# Two segments of 7 one-minute bars, one hour apart. (open, close) per bar.
PRICES = [(100, 100), (100, 101), (101.5, 102), (102, 101), (101, 103), (103, 103.5), (104, 104.25),
          (200, 200), (200, 201), (201, 202), (202, 203), (203, 204), (204, 205), (205, 206)]
SCRIPT = [BUY, BUY, BUY, SELL, BUY]  # the third buy hits the cap of 2; the last decision is forced flat


def tiny_bars() -> pd.DataFrame:
    stamps = pd.date_range("2024-03-04 14:30", periods=7, freq="1min", tz="UTC")
    stamps = stamps.append(pd.date_range("2024-03-04 16:00", periods=7, freq="1min", tz="UTC"))
    o, c = np.array(PRICES, float).T
    bars = pd.DataFrame({"open": o, "high": np.maximum(o, c) + 0.25, "low": np.minimum(o, c) - 0.25, "close": c},
                        index=pd.DatetimeIndex(stamps, name="timestamp"))
    return bars


def make_env(symbol: str, max_position: int = 2, kind: str = "pnl", window: int = 2, bars=None, **reward_kw):
    bars = tiny_bars() if bars is None else bars
    feats = np.column_stack([np.arange(len(bars), dtype=float), bars["close"].to_numpy()])
    seg = segment_ids(bars)
    spec = ObservationSpec(FeatureNormalizer.fit(feats, ["i", "close"], np.arange(len(bars))), window, max_position, 100_000.0, 1_000.0)
    market = MarketData.build(feats, bars["open"], bars["close"], seg, spec)
    execution = ExecutionModel(contract_spec(symbol), commission_per_side=2.25, slippage_ticks=1.0, max_position=max_position)
    env = TradingEnvironment(market, execution, spec, RewardSettings(kind, reward_scale=10.0, **reward_kw), episode_length=100)
    return env, bars, seg


def run_script(env, start=1, script=SCRIPT):
    env.reset(options={"start": start})
    steps = []
    for a in script:
        obs, reward, terminated, truncated, info = env.step(a)
        steps.append((reward, terminated, truncated, info))
    return steps


# Per contract and side: commission 2.25 + one tick of slippage (NQ $5.00, ES $12.50).
# Bar P&L = prev * (open - prev_close) * pv + new * (close - open) * pv - |new - prev| * cost.
#   bar 2: 0 -> 1   1 * (102 - 101.5)                     -> NQ  10 - 7.25 =   2.75 | ES  25 - 14.75 =   10.25
#   bar 3: 1 -> 2   1 * (102 - 102) + 2 * (101 - 102)     -> NQ -40 - 7.25 = -47.25 | ES -100 - 14.75 = -114.75
#   bar 4: 2 -> 2   (capped: no trade) 2 * (103 - 101)    -> NQ  80          =  80    | ES 200          =  200
#   bar 5: 2 -> 1   2 * (103 - 103) + 1 * (103.5 - 103)   -> NQ  10 - 7.25 =   2.75 | ES  25 - 14.75 =   10.25
#   bar 6: 1 -> 0   forced flat at the segment's last bar: 1 * (104 - 103.5) -> NQ 2.75 | ES 10.25
HAND = {"NQ": [2.75, -47.25, 80.0, 2.75, 2.75], "ES": [10.25, -114.75, 200.0, 10.25, 10.25]}
COST = {"NQ": 7.25, "ES": 14.75}


@pytest.mark.parametrize("symbol", ["NQ", "ES"])
def test_scripted_pnl_costs_and_caps_match_hand_computation(symbol):
    env, bars, seg = make_env(symbol)
    steps = run_script(env)
    pnl = [s[3]["pnl"] for s in steps]
    assert pnl == pytest.approx(HAND[symbol], abs=1e-9)
    assert [s[3]["position"] for s in steps] == [1, 2, 2, 1, 0]  # capped at 2, flat at the segment end
    assert [s[3]["trade_qty"] for s in steps] == [1, 1, 0, -1, -1]
    assert [s[3]["costs"] for s in steps] == pytest.approx([COST[symbol]] * 2 + [0.0] + [COST[symbol]] * 2)
    assert [s[1] for s in steps] == [False] * 4 + [True]  # terminated exactly at the segment's last bar
    # reward "pnl" = net P&L / reward_scale (10 dollars here)
    assert [s[0] for s in steps] == pytest.approx(np.array(HAND[symbol]) / 10.0)
    # The same target positions through ExecutionModel.simulate give the same dollars.
    target = np.zeros(len(bars))
    target[1:6] = [1, 2, 2, 1, 1]
    sim = simulate(env.core.execution, target, bars["open"].to_numpy(), bars["close"].to_numpy(), seg)
    assert sim.pnl[2:7] == pytest.approx(HAND[symbol])


def test_balance_and_unrealized_pnl_follow_average_entry_price():
    env, _, _ = make_env("NQ")
    steps = run_script(env)
    info = [s[3] for s in steps]
    # bar 2: bought 1 at 101.5 + 0.25 = 101.75; close 102 -> unrealized 0.25 * 20 = 5; only commission realized.
    assert info[0]["fill_price"] == 101.75
    assert info[0]["unrealized_pnl"] == pytest.approx(5.0)
    assert info[0]["balance"] == pytest.approx(100_000 - 2.25)
    # bar 3: second at 102.25 -> average 102.0; close 101 -> unrealized 2 * -1 * 20 = -40.
    assert info[1]["unrealized_pnl"] == pytest.approx(-40.0)
    assert info[1]["balance"] == pytest.approx(100_000 - 2 * 2.25)
    # bar 5: sold 1 at 103 - 0.25 = 102.75 vs average 102 -> realized +15, three commissions.
    assert info[3]["fill_price"] == 102.75
    assert info[3]["balance"] == pytest.approx(100_000 + 15 - 3 * 2.25)
    assert info[3]["unrealized_pnl"] == pytest.approx(1 * (103.5 - 102.0) * 20)
    assert info[3]["balance"] + info[3]["unrealized_pnl"] == pytest.approx(100_000 + info[3]["equity"])
    # flat at the end: everything realized
    assert info[4]["unrealized_pnl"] == 0.0
    assert info[4]["balance"] == pytest.approx(100_000 + sum(HAND["NQ"]))


def test_buy_at_bar_t_fills_at_next_open_never_at_bar_t_prices():
    env, bars, _ = make_env("NQ")
    env.reset(options={"start": 2})
    _, _, _, _, info = env.step(BUY)
    assert info["fill_price"] == bars["open"].iloc[3] + 0.25  # open[t+1] plus one tick
    assert info["fill_price"] not in (bars["open"].iloc[2], bars["close"].iloc[2])
    # Moving bar t+1's open moves the fill; bars after t+1 change nothing about this step.
    moved = tiny_bars()
    moved.iloc[3, moved.columns.get_loc("open")] += 1.0
    moved.iloc[4:7, moved.columns.get_loc("open")] += 50.0
    moved.iloc[4:7, moved.columns.get_loc("close")] -= 50.0
    env2, _, _ = make_env("NQ", bars=moved)
    env2.reset(options={"start": 2})
    _, _, _, _, info2 = env2.step(BUY)
    assert info2["fill_price"] == info["fill_price"] + 1.0
    assert info2["pnl"] == pytest.approx(info["pnl"] - 1.0 * 20)


def test_observation_at_t_ignores_bars_after_t():
    bars = synthetic_bars(3_000, seed=5, edge_ic=0.1)
    feats = bars[["edge"]].to_numpy().copy()
    seg = segment_ids(bars)
    spec = ObservationSpec(FeatureNormalizer.fit(feats, ["edge"], np.arange(2_000)), 8, 5, 100_000.0, 1_000.0)
    ex = ExecutionModel(contract_spec("NQ"))
    a = MarketData.build(feats, bars["open"], bars["close"], seg, spec)
    changed = feats.copy()
    changed[1_001:] = 9.0
    b = MarketData.build(changed, bars["open"], bars["close"], seg, spec)
    assert np.array_equal(a.windows[1_000], b.windows[1_000])
    assert not np.array_equal(a.windows[1_001], b.windows[1_001])
    assert np.array_equal(a.windows[1_000].reshape(8, 1)[-1], spec.normalizer.transform(feats[1_000:1_001])[0])
    core = TradingCore(a, ex, spec, RewardSettings(), 1)
    core.reset(starts=np.array([1_000]))
    assert core.observe()[0, :8].tolist() == a.windows[1_000].tolist()


def test_episode_starts_skip_warm_up_and_never_cross_a_gap():
    bars = synthetic_bars(6_000, seed=2)  # five sessions with gaps between them
    seg = segment_ids(bars)
    feats = np.random.default_rng(0).standard_normal((len(bars), 3))
    starts_of_segments = np.flatnonzero(np.r_[True, seg[1:] != seg[:-1]])
    for s in starts_of_segments:
        feats[s : s + 20, 1] = np.nan  # feature warm-up after every gap
    spec = ObservationSpec(FeatureNormalizer.fit(feats, list("abc"), np.arange(4_000)), 8, 5, 100_000.0, 1_000.0)
    market = MarketData.build(feats, bars["open"], bars["close"], seg, spec, span=(0, 4_000))
    assert market.starts.max() < 4_000
    for t in market.starts[:: max(1, len(market.starts) // 500)]:
        assert np.isfinite(feats[t - 7 : t + 1]).all() and (seg[t - 7 : t + 1] == seg[t]).all()
    env = TradingVecEnv(market, ExecutionModel(contract_spec("NQ")), spec, RewardSettings(), n_envs=32,
                        episode_length=500, seed=1)
    env.reset()
    rng = np.random.default_rng(3)
    ended_at_segment_end = 0
    for _ in range(1_500):
        t = env.core.t.copy()
        _, _, done, infos = env.step(rng.integers(0, 3, 32))
        assert (seg[t + 1] == seg[t]).all()  # the bar traded is in the decision's segment
        for i in np.flatnonzero(done):
            if not infos[i]["TimeLimit.truncated"]:
                ended_at_segment_end += 1
                assert t[i] + 1 == len(seg) - 1 or seg[t[i] + 2] != seg[t[i]]
                assert env.core.position[i] == 0 or env.core.steps[i] == 0
    assert ended_at_segment_end > 0


def test_vec_env_truncates_after_episode_length_and_reports_terminal_observation():
    bars = synthetic_bars(3_000, seed=1)
    feats = bars[["close"]].to_numpy()
    seg = segment_ids(bars)
    spec = ObservationSpec(FeatureNormalizer.fit(feats, ["close"], np.arange(3_000)), 4, 5, 100_000.0, 1_000.0)
    market = MarketData.build(feats, bars["open"], bars["close"], seg, spec, span=(0, 100))
    env = TradingVecEnv(market, ExecutionModel(contract_spec("NQ")), spec, RewardSettings("pnl", 50.0), n_envs=4,
                        episode_length=10, seed=0)
    obs = env.reset()
    assert obs.shape == (4, spec.obs_dim) and obs.dtype == np.float32
    for k in range(10):
        obs, rew, done, infos = env.step(np.full(4, BUY))
    assert done.all() and all(i["TimeLimit.truncated"] for i in infos)
    term = np.stack([i["terminal_observation"] for i in infos])
    wf = spec.window * spec.n_features
    assert np.allclose(term[:, wf], 5 / 5)  # capped at +5 contracts, scaled by max_position
    assert (term[:, wf + 3 :] == 1).all()  # last 10 actions were all buys
    assert (obs[:, wf] == 0).all() and (obs[:, wf + 3 :] == 0).all()  # fresh episodes are flat
    assert [i["episode"]["l"] for i in infos] == [10] * 4


def test_vec_env_and_single_env_agree_step_by_step():
    env, bars, seg = make_env("ES")
    single = run_script(env)
    market, spec = env.core.market, env.core.spec
    vec = TradingVecEnv(market, env.core.execution, spec, RewardSettings("pnl", 10.0), n_envs=3, episode_length=100)
    vec.reset()
    vec.core.reset(starts=np.array([1, 1, 1]))
    for k, a in enumerate(SCRIPT):
        _, rew, _, _ = vec.step(np.full(3, a))
        assert rew == pytest.approx([single[k][0]] * 3)


def test_differential_sharpe_reward_matches_the_formula():
    env, _, _ = make_env("NQ", kind="sharpe", dsr_eta=0.1)
    steps = run_script(env)
    r = np.array(HAND["NQ"]) / 10.0
    a, b, expected = 0.0, 1.0, []
    for x in r:
        bf = max(b, a * a + 1.0)
        expected.append(np.clip((bf * (x - a) - 0.5 * a * (x * x - b)) / (bf - a * a) ** 1.5, -10, 10))
        a, b = a + 0.1 * (x - a), b + 0.1 * (x * x - b)
    assert [s[0] for s in steps] == pytest.approx(expected, rel=1e-5)


def test_trade_risk_and_drawdown_penalties():
    plain = [s[0] for s in run_script(make_env("NQ")[0])]
    traded = [s[0] for s in run_script(make_env("NQ", trade_penalty=0.5)[0])]
    assert np.array(plain) - np.array(traded) == pytest.approx([0.5, 0.5, 0.0, 0.5, 0.5])
    risk = [s[0] for s in run_script(make_env("NQ", risk_penalty=0.1)[0])]
    # positions held after each step: 1, 2, 2, 1, 0 -> 0.1 * position**2
    assert np.array(plain) - np.array(risk) == pytest.approx([0.1, 0.4, 0.4, 0.1, 0.0])
    dd = [s[0] for s in run_script(make_env("NQ", drawdown_penalty=1.0)[0])]
    # only bar 3 deepens the drawdown (equity 2.75 -> -44.5): penalty 47.25 / 10
    assert np.array(plain) - np.array(dd) == pytest.approx([0.0, 4.725, 0.0, 0.0, 0.0])


def test_bad_inputs_are_clear_errors():
    env, _, _ = make_env("NQ")
    with pytest.raises(TradeMLError, match="cannot start an episode"):
        env.reset(options={"start": 0})  # warm-up: the window needs bars 0 and 1
    env.reset(options={"start": 1})
    with pytest.raises(TradeMLError, match="actions must be"):
        env.step(3)
    with pytest.raises(TradeMLError, match="unknown reward"):
        RewardSettings("sortino")


def test_gymnasium_env_checker_accepts_trading_environment():
    from stable_baselines3.common.env_checker import check_env

    env, _, _ = make_env("NQ")
    check_env(env, warn=False)
    obs, info = env.reset(seed=3)
    assert env.observation_space.contains(obs)
    assert env.action_space.n == 3 and (HOLD, BUY, SELL) == (0, 1, 2)
