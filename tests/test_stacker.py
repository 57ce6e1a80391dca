"""The stacked ensemble (``trademl.models.stacker``): a calibrated probability that each side's
trade wins after costs, fitted only on rows its base models never trained on.

Generated votes with a known answer (the true win probability of each row is planted) check
the fit: calibration out of sample, the base rate when nothing is present, a missing model
moving the answer toward the base rate, the decision rule and the bet size. Then the stacker
through ``train all`` on synthetic bars: stored with the versions it was fitted on, on rows
after the base models' span, served by the predictor, refused when tampered or stale.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from trademl.errors import ModelStoreError
from trademl.models import stacker as st
from trademl.models.stacker_train import fit_stacker

NAMES = ["atr_ticks_14", "tod_sin", "tod_cos", "rsi"]
WIN, LOSS = 40.0, 30.0  # dollars a winning / losing trade makes, after costs


def planted(n: int, seed: int):
    """Votes of an informative model (``good``: a noisy view of the planted signal) and a useless
    one (``noise``), feature rows, and outcomes drawn from the planted probabilities: a long wins
    with p_long = 0.9 sigmoid(1.2 s), a short with p_short = 0.9 sigmoid(-1.2 s), never both."""
    rng = np.random.default_rng(seed)
    s = rng.normal(size=n)
    p_long, p_short = 0.9 / (1 + np.exp(-1.2 * s)), 0.9 / (1 + np.exp(1.2 * s))
    u = rng.random(n)
    won_long, won_short = (u < p_long).astype(float), (u > 1 - p_short).astype(float)
    pnl_long = np.where(won_long > 0, WIN, -LOSS)
    pnl_short = np.where(won_short > 0, WIN, -LOSS)
    seen = s + rng.normal(scale=0.3, size=n)  # what the good model sees
    good = np.stack([np.full(n, 0.1), 0.9 / (1 + np.exp(-seen)), 0.9 / (1 + np.exp(seen))], axis=1)
    noise = rng.dirichlet([2, 2, 2], n)
    rows = np.column_stack([rng.uniform(4, 40, n), np.sin(rng.uniform(0, 6.3, n)), np.cos(rng.uniform(0, 6.3, n)),
                            rng.uniform(20, 80, n)])
    return {"good": good, "noise": noise}, rows, (won_long, won_short, pnl_long, pnl_short), (p_long, p_short)


@pytest.fixture(scope="module")
def fitted():
    votes, rows, outcomes, _ = planted(8_000, seed=0)
    params, metrics = fit_stacker(votes, rows, NAMES, outcomes, horizon=5)
    return st.StackerRuntime(params), params, metrics


def test_the_probability_is_calibrated_out_of_sample(fitted):
    """On fresh rows the stacker's probability matches the planted one and the outcome rates."""
    from trademl.models.calibration import expected_calibration_error

    runtime, _, metrics = fitted
    votes, rows, outcomes, truth = planted(20_000, seed=1)
    p_long, p_short, informed = runtime.probabilities(votes, rows, NAMES, len(rows))
    assert informed.all()
    for p, won, true in ((p_long, outcomes[0], truth[0]), (p_short, outcomes[1], truth[1])):
        assert expected_calibration_error(p, won) < 0.02
        assert np.corrcoef(p, true)[0, 1] > 0.9  # it learned the good model, not the noise
        assert abs(p.mean() - won.mean()) < 0.02  # the training sample's own rate is ~0.006 off
    assert metrics["ece_long_out_of_fold"] < 0.03 and metrics["ece_short_out_of_fold"] < 0.03


def test_with_every_model_missing_it_is_the_base_rate(fitted):
    """Nothing present: the training base rate. The stacker is fitted on the span and its mirror
    image (``stacker_train.mirrored``), so its base rate is the span's rate of a winning trade
    on either side, the same for both; here the two sides' own rates are within 0.01 of it."""
    runtime, params, _ = fitted
    votes, rows, outcomes, _ = planted(8_000, seed=0)  # the training rows: their base rate
    either = (outcomes[0].mean() + outcomes[1].mean()) / 2
    missing = {k: np.full((500, 3), np.nan) for k in votes}
    p_long, p_short, informed = runtime.probabilities(missing, rows[:500], NAMES, 500)
    assert not informed.any()
    assert np.allclose(p_long, either, atol=1e-12) and np.allclose(p_short, either, atol=1e-12)
    assert params["base_rate"]["long"] == pytest.approx(either) == params["base_rate"]["short"]
    assert abs(either - outcomes[0].mean()) < 0.01 and abs(either - outcomes[1].mean()) < 0.01
    d = runtime.decide(missing, rows[:500], NAMES, threshold=0.5, max_contracts=5)
    assert (d.action == 0).all()  # no information, no trade
    np.testing.assert_allclose(d.confidence, 1 - 2 * either, atol=1e-12)


def test_the_mirrored_fit_leans_to_no_side():
    """A span that drifted up (a long's planted win probability 0.1 higher, a short's 0.1 lower,
    whatever the votes say) teaches the stacker nothing about the next days' direction: on
    fresh rows without the drift both sides' probabilities average alike and match the
    outcomes, and a vote and its mirror image get mirrored answers."""
    from trademl.models.calibration import expected_calibration_error

    votes, rows, _, (p_long, p_short) = planted(8_000, seed=21)
    u = np.random.default_rng(22).random(8_000)
    won_long, won_short = (u < p_long + 0.1).astype(float), (u > 1 - (p_short - 0.1)).astype(float)
    assert won_long.mean() - won_short.mean() > 0.15
    drifted = (won_long, won_short, np.where(won_long > 0, WIN, -LOSS), np.where(won_short > 0, WIN, -LOSS))
    runtime = st.StackerRuntime(fit_stacker(votes, rows, NAMES, drifted, horizon=5)[0])
    votes, rows, outcomes, _ = planted(20_000, seed=23)
    p_long, p_short, _ = runtime.probabilities(votes, rows, NAMES, len(rows))
    assert abs(p_long.mean() - p_short.mean()) < 0.01
    assert expected_calibration_error(p_long, outcomes[0]) < 0.02 and expected_calibration_error(p_short, outcomes[1]) < 0.02
    mirror = {k: v[:, [0, 2, 1]] for k, v in votes.items()}
    m_long, m_short, _ = runtime.probabilities(mirror, rows, NAMES, len(rows))
    np.testing.assert_allclose(m_long, p_short, atol=1e-6)
    np.testing.assert_allclose(m_short, p_long, atol=1e-6)


def test_removing_the_informative_model_moves_toward_the_base_rate(fitted):
    """On 500 random rows, dropping the good model's vote (as a request without the inputs it
    needs would) leaves the stacker closer to the base rate: missing information never adds
    confidence."""
    runtime, params, _ = fitted
    votes, rows, _, _ = planted(500, seed=2)
    full = runtime.probabilities(votes, rows, NAMES, 500)[0]
    without = runtime.probabilities({"noise": votes["noise"]}, rows, NAMES, 500)[0]
    base = params["base_rate"]["long"]
    toward = np.abs(without - base) <= np.abs(full - base) + 1e-12
    assert toward.mean() > 0.9
    assert np.abs(without - base).mean() < 0.25 * np.abs(full - base).mean()
    # The context features alone (a bar whose feature row is all missing) change nothing either.
    blank = runtime.probabilities(votes, np.full_like(rows, np.nan), NAMES, 500)[0]
    assert np.abs(blank - full).mean() < 0.02


def test_two_models_that_see_the_same_edge_share_it_and_none_is_bet_against():
    """The meta-model weights each kind by its own slope, with the side's sign: a second, noisier
    copy of the good model adds weight in the same direction (a free regression on both let the
    pair fight over the edge), and a model whose votes run against the outcomes gets none, so the
    stacker never bets against a model."""
    votes, rows, outcomes, truth = planted(8_000, seed=6)
    rng = np.random.default_rng(7)
    echo = np.clip(votes["good"] + rng.normal(scale=0.05, size=votes["good"].shape), 0.01, 0.99)
    echo /= echo.sum(axis=1, keepdims=True)
    contrary = votes["good"][:, [0, 2, 1]]  # buys where the good model sells
    params, _ = fit_stacker({"good": votes["good"], "echo": echo, "contrary": contrary}, rows, NAMES, outcomes, horizon=5)
    for side, sign in (("long", 1.0), ("short", -1.0)):
        coef = np.asarray(params["coef"][side])
        view = {k: coef[2 * j] for j, k in enumerate(params["kinds"])}  # the buy logit's weight; sell's is its negative
        np.testing.assert_allclose(coef[1:6:2], -coef[0:6:2])
        assert sign * view["good"] > 0 and sign * view["echo"] > 0
        assert view["contrary"] == 0.0
        assert np.all(coef[6:] == 0.0)  # no presence or context weights unless asked for
    p_long = st.StackerRuntime(params).probabilities({"good": votes["good"], "echo": echo, "contrary": contrary},
                                                      rows, NAMES, len(rows))[0]
    assert np.corrcoef(p_long, truth[0])[0, 1] > 0.9


def test_the_decision_rule_and_the_bet_size():
    p_long = np.array([0.80, 0.60, 0.60, 0.30, 0.72, 0.75])
    p_short = np.array([0.10, 0.20, 0.20, 0.65, 0.71, 0.75])
    pnl_long = np.array([20.0, 5.0, -1.0, -9.0, 10.0, 3.0])
    pnl_short = np.array([-20.0, -5.0, -5.0, 8.0, 12.0, 3.0])
    action = st.choose_action(p_long, p_short, pnl_long, pnl_short, 0.55)
    # BUY: p and expected P&L both clear; a positive-probability side with a negative expectation
    # holds; SELL when its side clears; both clear: the better expectation; a tie goes long.
    assert action.tolist() == [1, 1, 0, 2, 2, 1]
    assert st.choose_action(p_long, p_short, pnl_long, pnl_short, 0.85).tolist() == [0] * 6
    # Lopez de Prado: m = 2 Phi((p - 1/2) / sqrt(p (1 - p))) - 1, times the cap, at least one.
    z = (0.9 - 0.5) / math.sqrt(0.9 * 0.1)
    m = math.erf(z / math.sqrt(2))
    assert st.bet_size(np.array([0.9]), 5)[0] == round(5 * m) == 4
    sizes = st.bet_size(np.linspace(0.5, 0.999, 50), 5)
    assert sizes.min() == 1 and sizes.max() == 5 and np.all(np.diff(sizes) >= 0)


def test_the_decision_reads_the_expected_pnl_from_the_payoff(fitted):
    runtime, params, _ = fitted
    # The average win and loss of the span's trades are the planted ones.
    assert params["average_win"]["long"] == pytest.approx(WIN) and params["average_loss"]["short"] == pytest.approx(LOSS)
    # Every win makes WIN and every loss LOSS: the learned map of the probability is the payoff's
    # line p WIN - (1 - p) LOSS, break-even at 3/7, over the probabilities the span held.
    p = np.array([0.3, 3 / 7, 0.6])
    np.testing.assert_allclose(runtime.expected_pnl(p, "long"), p * WIN - (1 - p) * LOSS, atol=1.0)
    assert abs(runtime.expected_pnl(np.array([3 / 7]), "long")[0]) < 1.0
    votes, rows, _, _ = planted(2_000, seed=4)
    d = runtime.decide(votes, rows, NAMES, threshold=0.6, max_contracts=3)
    trade = d.action != 0
    assert 0.05 < trade.mean() < 0.95
    assert np.all(d.confidence[trade] > 0.6) and np.all(d.expected_pnl[trade] > 0)
    assert np.all((d.contracts[trade] >= 1) & (d.contracts[trade] <= 3)) and np.all(d.contracts[~trade] == 0)
    # The auto threshold is one of the grid's, and so is the informative model's alone.
    assert params["threshold_auto"] in st.THRESHOLD_GRID
    assert set(params["alone_thresholds"]) == {"good", "noise"} and params["alone_thresholds"]["good"] in st.THRESHOLD_GRID


def test_a_stacker_stored_before_the_pnl_map_keeps_its_payoff_line(fitted):
    """Parameters written before 2026-12-04 have no ``pnl_map``: their expected P&L stays the
    line from the span's average win and loss they were served with."""
    _, params, _ = fitted
    legacy = st.StackerRuntime({k: v for k, v in params.items() if k != "pnl_map"})
    p = np.array([0.2, 0.5, 0.9])
    np.testing.assert_allclose(legacy.expected_pnl(p, "short"),
                               p * params["average_win"]["short"] - (1 - p) * params["average_loss"]["short"])


def paid_by_conviction(n: int, seed: int):
    """``planted`` markets whose wins pay more where the planted probability is higher: a win
    makes 10 + 120 (p - 0.3)+ dollars, a loss 30 (a trend that runs further when it is clearer)."""
    votes, rows, (won_long, won_short, _, _), (p_long, p_short) = planted(n, seed)
    pay = lambda won, p: np.where(won > 0, 10.0 + 120.0 * np.maximum(p - 0.3, 0.0), -LOSS)  # noqa: E731
    return votes, rows, (won_long, won_short, pay(won_long, p_long), pay(won_short, p_short))


def test_the_expected_pnl_follows_a_payoff_that_grows_with_the_probability():
    """The expected P&L is the P&L of the trades at that probability, not the span's average win
    and loss: where wins pay more as the probability rises, the learned map matches what fresh
    trades at each probability made, and the average-payoff line misses it by far more."""
    votes, rows, outcomes = paid_by_conviction(8_000, seed=11)
    runtime = st.StackerRuntime(fit_stacker(votes, rows, NAMES, outcomes, horizon=5)[0])
    votes, rows, (_, _, pnl_long, _) = paid_by_conviction(20_000, seed=12)
    p_long = runtime.probabilities(votes, rows, NAMES, len(rows))[0]
    line = p_long * runtime.average_win["long"] - (1 - p_long) * runtime.average_loss["long"]
    learned = runtime.expected_pnl(p_long, "long")
    bins = np.quantile(p_long, np.linspace(0, 1, 11))
    which = np.clip(np.searchsorted(bins, p_long, side="right") - 1, 0, 9)
    made = np.array([pnl_long[which == b].mean() for b in range(10)])
    error = lambda e: np.abs(np.array([e[which == b].mean() for b in range(10)]) - made)  # noqa: E731
    assert error(learned).max() < 4.0
    assert error(line).max() > 3 * error(learned).max()


def _ar1(rng, n: int, phi: float) -> np.ndarray:
    x = np.empty(n)
    x[0], shocks = rng.normal(), rng.normal(size=n) * math.sqrt(1 - phi ** 2)
    for i in range(1, n):
        x[i] = phi * x[i - 1] + shocks[i]
    return x


def test_a_slow_vote_earns_weight_only_with_clustered_evidence():
    """A vote that knows nothing but moves slowly (an AR(1), phi 0.9), against outcomes whose win
    rate drifts slowly too (another, independent): the two persistent series line up by chance
    (the spurious regression), so a standard error that takes every bar as a fresh look finds
    the slope beyond NOISE_Z on about a third of 40 markets. Clustered over CLUSTER_BARS bars
    (``view_slope``) it finds it on about the two-sided 5% the cut stands for; and such a
    slope gets no weight in the combined score."""
    from trademl.models.stacker_train import combination_weights, view_slope

    clustered, naive = 0, 0
    for seed in range(40):
        rng = np.random.default_rng(300 + seed)
        drift, slow = _ar1(rng, 4_000, 0.9), _ar1(rng, 4_000, 0.9)
        y = (rng.random(4_000) < 1 / (1 + np.exp(-2.0 * drift))).astype(float)
        z = view_slope(slow, y, np.arange(4_000))[1]
        clustered += abs(z) > st.NOISE_Z
        naive += abs(view_slope(slow, y, np.arange(4_000) * st.CLUSTER_BARS)[1]) > st.NOISE_Z  # a cluster a bar
        if abs(z) <= st.NOISE_Z:  # a design of one kind: buy logit, sell logit, presence
            X = np.column_stack([slow / 2, -slow / 2, np.ones(4_000)])
            assert combination_weights(X, y, 1, 1.0 if z > 0 else -1.0, np.arange(4_000))[0] == 0.0
    assert clustered <= 6 and naive >= 10


def test_without_evidence_every_candidate_holds_at_the_auto_threshold():
    """Votes that know nothing, on 20 generated markets whose trades win or lose 35 dollars at
    even odds, apart from the votes: a threshold is chosen only where its decisions beat chance
    at 1.645 standard errors, so each candidate (the stacker, and each model alone) finds an edge
    on about the family-wise rate of five nested one-sided 5% tests (measured 5-15%), and
    elsewhere its auto threshold is NO_EDGE and it holds. An uncalibrated vote share is above the
    grid's top (0.7) on many rows: the grid's top as the fallback would have let that model
    alone trade on no evidence."""
    found, held = [], 0
    for seed in range(20):
        votes, rows, _, _ = planted(3_000, seed=100 + seed)
        rng = np.random.default_rng(200 + seed)
        won_long = (rng.random(3_000) < 0.5).astype(float)
        won_short = 1.0 - won_long
        unrelated = (won_long, won_short, np.where(won_long > 0, 35.0, -35.0), np.where(won_short > 0, 35.0, -35.0))
        confident = rng.dirichlet([8, 1, 1], 3_000)[:, [1, 0, 2]]  # a buy share above 0.7 on ~half the rows
        assert (confident.max(axis=1) > max(st.THRESHOLD_GRID)).mean() > 0.3
        chosen = {"noise": votes["noise"], "confident": confident}
        params, metrics = fit_stacker(chosen, rows, NAMES, unrelated, horizon=5)
        found.append([params["threshold_auto"] != st.NO_EDGE,
                      *(params["alone_thresholds"][k] != st.NO_EDGE for k in chosen)])
        if params["threshold_auto"] == st.NO_EDGE:
            assert set(metrics["threshold_sharpe"].values()) == {None}
            d = st.StackerRuntime(params).decide(chosen, rows, NAMES, max_contracts=5)
            assert d.threshold == st.NO_EDGE and (d.action == 0).all() and (d.contracts == 0).all()
            held += 1
    rates = np.mean(found, axis=0)
    assert rates.max() <= 0.3 and rates.mean() <= 0.2, rates
    assert held >= 14


def _graded_trades(seed: int, mean_by_band, n: int = 6_000):
    """Long trades on generated rows with a confidence uniform on [0.45, 0.75): a trade's P&L is
    drawn around ``mean_by_band(confidence)`` dollars (sd 20). Returns (actions_at, pnl_long,
    pnl_short) for ``best_threshold``: BUY above the threshold, else HOLD."""
    rng = np.random.default_rng(seed)
    confidence = rng.uniform(0.45, 0.75, n)
    pnl_long = mean_by_band(confidence) + rng.normal(0.0, 20.0, n)
    return (lambda t: np.where(confidence > t, 1, 0)), pnl_long, -pnl_long


def test_the_auto_threshold_rises_only_past_trades_that_lose():
    """A known answer: trades with confidence in (0.5, 0.6] lose 6 dollars on average, those
    above 0.6 win 8. The rule starts at the lowest threshold that beats chance (0.5) and rises
    past each band whose dropped trades lose beyond 1.645 standard errors: to 0.6, not beyond
    (0.65 would drop winners). Where the trades in (0.5, 0.55] break even, 0.55 has the better
    Sharpe on every one of 20 markets (the same mean, less variance: the grid's best Sharpe, the
    rule before, took it on all 20), but they lose nothing, so the rule stays at 0.5; and where
    every trade above 0.5 wins alike it stays there on nearly every market."""
    from trademl.models.stacker_train import best_threshold

    losing_band = lambda c: np.where(c > 0.6, 8.0, -6.0)  # noqa: E731
    chosen = [best_threshold(*_graded_trades(seed, losing_band))[0] for seed in range(10)]
    assert chosen.count(0.6) >= 9, chosen
    break_even_band = lambda c: np.where(c > 0.55, 3.0, 0.0)  # noqa: E731
    chosen = [best_threshold(*_graded_trades(seed, break_even_band))[0] for seed in range(20)]
    assert chosen.count(0.5) >= 17, chosen
    flat = lambda c: np.full_like(c, 3.0)  # noqa: E731
    chosen = [best_threshold(*_graded_trades(seed, flat))[0] for seed in range(20)]
    assert chosen.count(0.5) >= 17, chosen
    # nothing beats chance: every candidate holds
    threshold, scores = best_threshold(*_graded_trades(0, lambda c: np.zeros_like(c) - 1.0))
    assert threshold == st.NO_EDGE and set(scores.values()) == {None}


@pytest.mark.parametrize("tamper", ["wrong shape", "not finite", "not json", "base rate", "pnl map"])
def test_tampered_parameters_are_refused(fitted, tamper):
    _, params, _ = fitted
    bad = json.loads(json.dumps(params))
    if tamper == "wrong shape":
        bad["coef"]["long"] = bad["coef"]["long"][:-1]
        text = json.dumps(bad)
    elif tamper == "not finite":
        text = json.dumps(bad).replace(str(bad["intercept"]["short"]), "NaN", 1)
    elif tamper == "base rate":
        bad["base_rate"]["long"] = 1.5
        text = json.dumps(bad)
    elif tamper == "pnl map":  # an expected P&L that falls as the probability rises
        bad["pnl_map"]["short"]["y"] = bad["pnl_map"]["short"]["y"][::-1]
        text = json.dumps(bad)
    else:
        text = json.dumps(bad)[:-20]

    class Stored:  # what StackerRuntime.load reads of a StoredModel
        version, manifest = "v", {"model": {"base_versions": {}}}
        path = None

        def file(self, name):
            return tmp

    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder) / st.STACKER_FILE
        tmp.write_text(text)
        Stored.path = Path(folder)
        with pytest.raises(ModelStoreError, match="stacker"):
            st.StackerRuntime.load(Stored())


# ----------------------------------------------------------------------------- through train all


@pytest.fixture(scope="module")
def stacked_store(tmp_path_factory):
    """LightGBM 5m / 30m and their stacker, trained by ``train all`` on 12,000 synthetic bars (IC 0.25:
    the tiny models must see enough edge for some trades to pay after costs)."""
    from tests.conftest import TINY_OVERRIDES
    from trademl.config import load_config
    from trademl.data.dataset import dataset_from_bars
    from trademl.data.synthetic import synthetic_bars
    from trademl.models.train_all import train_models

    root = tmp_path_factory.mktemp("stacked") / "models"
    overrides = {k: dict(v) for k, v in TINY_OVERRIDES.items()}
    overrides["paths"] = {"model_root": str(root)}
    cfg = load_config(None, overrides)
    bars = synthetic_bars(12_000, seed=3, edge_ic=0.25, symbol="NQ")
    dataset = dataset_from_bars(bars, cfg)
    trained = train_models(dataset, cfg, root, models=("lgbm",))
    return root, cfg, bars, dataset, trained


def test_train_all_stacks_on_rows_no_base_model_trained_on(stacked_store):
    import pandas as pd

    root, cfg, _, dataset, trained = stacked_store
    stacker = trained.stored[st.STACKER_KIND]
    info = stacker.manifest["model"]
    assert info["base_versions"] == {k: trained.stored[k].version for k in ("lgb_5m", "lgb_30m")}
    span = stacker.manifest["training_span"]
    n = len(dataset.frame)
    assert span["rows"] == int(n * cfg.ensemble.stack_share)
    for kind in ("lgb_5m", "lgb_30m"):
        base_end = pd.Timestamp(trained.stored[kind].manifest["training_span"]["end"])
        # the purge gap: the longest horizon plus the embargo, so no base label reaches a stacker row
        gap = dataset.frame.index.get_loc(pd.Timestamp(span["start"])) - dataset.frame.index.get_loc(base_end)
        assert gap > 2 * max(dataset.horizons)
    assert stacker.manifest["metrics"]["kinds"] == ["lgb_5m", "lgb_30m"]


def _bars_request(frame, row: int, needed: int) -> dict:
    cols = ["open", "high", "low", "close", "volume", "edge"]
    part = frame.iloc[max(0, row - needed + 1): row + 1]
    return {"symbol": "NQ", "bars": [{"timestamp": t.isoformat(), **{c: float(v) for c, v in zip(cols, r)}}
                                     for t, r in zip(part.index, part[cols].to_numpy())]}


def test_the_predictor_answers_with_the_stacker(stacked_store):
    from trademl.models.base import ModelInputs
    from trademl.predict.ensemble import EnsemblePredictor

    root, cfg, _, dataset, trained = stacked_store
    predictor = EnsemblePredictor(root, cfg, record=False)
    models = predictor.models
    assert models.stacker is not None and models.stacker_note is None
    row = len(dataset.frame) - 50
    out = predictor.ensemble_predict(_bars_request(dataset.frame, row, models.bars_needed()))
    assert out["model_versions"]["stacker"] == trained.stored[st.STACKER_KIND].version
    assert set(out["votes"]) == {"lgb_5m", "lgb_30m"}
    # The stacker's own answer on the dataset's row (the predictor built the same features from the bars).
    votes = {k: rt.predict(ModelInputs(dataset.X, [row], dataset.segments)).vote for k, rt in models.runtimes.items()}
    d = models.stacker.decide(votes, dataset.X[[row]], dataset.feature_names, threshold=0.7, max_contracts=5)
    assert out["p_win_long"] == pytest.approx(d.p_long[0], abs=1e-9)
    assert out["p_win_short"] == pytest.approx(d.p_short[0], abs=1e-9)
    assert out["threshold"] == 0.7
    if out["ensemble_recommendation"] == "HOLD":
        assert out["confidence_score"] == pytest.approx(1 - d.p_long[0] - d.p_short[0], abs=1e-9)
        assert out["suggested_contracts"] == 0 and out["expected_pnl"] == 0
    else:
        side = "long" if out["ensemble_recommendation"] == "BUY" else "short"
        assert out["confidence_score"] == out[f"p_win_{side}"] > 0.7 and out["expected_pnl"] > 0
    assert not any("not a calibrated probability" in w for w in out["warnings"])
    # With auto, the threshold is the stacker's own choice.
    auto = cfg.model_copy(deep=True)
    auto.backtest.confidence_threshold = "auto"
    served = EnsemblePredictor(root, auto, record=False)
    out = served.ensemble_predict(_bars_request(dataset.frame, row, models.bars_needed()))
    assert out["threshold"] == models.stacker.threshold_auto
    # A stacker that found no edge on its rows: HOLD at auto, and the response says why.
    served.models.stacker.threshold_auto = st.NO_EDGE
    for r in (row, row - 7, row - 19):
        out = served.ensemble_predict(_bars_request(dataset.frame, r, models.bars_needed()))
        assert out["ensemble_recommendation"] == "HOLD" and out["threshold"] == st.NO_EDGE
        assert out["suggested_contracts"] == 0 and any("beat chance at no threshold" in w for w in out["warnings"])


def test_a_stacker_fitted_on_other_versions_is_not_used(stacked_store, tmp_path):
    import shutil

    from trademl.data.dataset import sub_dataset
    from trademl.models.kinds.lgbm import LGBMWinModel
    from trademl.predict.ensemble import EnsemblePredictor

    root, cfg, _, dataset, _ = stacked_store
    copy = tmp_path / "models"
    shutil.copytree(root, copy)
    LGBMWinModel(5, cfg).fit(sub_dataset(dataset, np.arange(6_000))).save(copy)  # a newer lgb_5m
    predictor = EnsemblePredictor(copy, cfg, record=False)
    assert predictor.models.stacker is None
    assert "fitted on other versions" in predictor.models.stacker_note
    out = predictor.ensemble_predict(_bars_request(dataset.frame, len(dataset.frame) - 50,
                                                   predictor.models.bars_needed()))
    assert any("fitted on other versions" in w for w in out["warnings"]) and "p_win_long" not in out


def test_the_walk_forward_and_the_predictor_take_the_same_stacked_decisions(tmp_path):
    """The redesign's test with the stacker: a fold replayed bar by bar through the predictor
    gives the walk-forward's decisions and confidences, the auto threshold included."""
    from tests.conftest import TINY_OVERRIDES
    from trademl.backtest.walkforward import walk_forward_backtest
    from trademl.config import load_config
    from trademl.data.dataset import dataset_from_bars
    from trademl.data.synthetic import synthetic_bars
    from trademl.market.actions import ACTION_NAMES, direction_of
    from trademl.predict.ensemble import EnsemblePredictor

    overrides = {k: dict(v) for k, v in TINY_OVERRIDES.items()}
    overrides["backtest"] = {"confidence_threshold": "auto"}
    cfg = load_config(None, overrides)
    ds = dataset_from_bars(synthetic_bars(12_000, seed=5, edge_ic=0.15, symbol="NQ"), cfg)
    result = walk_forward_backtest(ds, cfg, models=("lgbm",), n_folds=2, keep_models=tmp_path / "folds")
    fold = result.folds[1]
    assert result.folds[0].stacker is None and fold.stacker is not None  # fold 1 has too few rows for one
    predictor = EnsemblePredictor(tmp_path / "folds" / "fold1", cfg, record=False)
    assert predictor.models.stacker.version == fold.stacker
    expected = result.signals[result.signals["fold"] == 1].iloc[:300]
    needed = predictor.models.bars_needed()
    got_action, got_conf = [], []
    for t in expected.index:
        out = predictor.ensemble_predict(_bars_request(ds.frame, ds.frame.index.get_loc(t), needed))
        got_action.append(direction_of(ACTION_NAMES.index(out["ensemble_recommendation"])))
        got_conf.append(out["confidence_score"])
        assert out["threshold"] == fold.thresholds["ensemble"]
    np.testing.assert_array_equal(got_action, expected["action"].to_numpy())
    np.testing.assert_allclose(got_conf, expected["confidence"].to_numpy(), rtol=0, atol=1e-12)
    probabilities = result.outputs.loc[expected.index, ["stacker_p_win_long", "stacker_p_win_short"]].to_numpy()
    assert np.isfinite(probabilities).all() and len(set(np.round(probabilities[:, 0], 6))) > 20


def test_with_an_account_the_size_is_the_smaller_of_the_bet_size_and_the_rules(stacked_store):
    """The probability's bet size is capped by the risk block's (fractional Kelly within the
    account's room, the rules' contract cap); a trade whose stop would breach is a HOLD of 0."""
    from trademl.predict.ensemble import EnsemblePredictor

    root, cfg, _, dataset, _ = stacked_store
    low = cfg.model_copy(deep=True)
    low.backtest.confidence_threshold = 0.0  # every bar with a positive expected P&L is a trade here
    predictor = EnsemblePredictor(root, low, record=False)
    needed = predictor.models.bars_needed()
    roomy = {"rules": "topstep-50k", "balance": 50_000, "start_of_day_balance": 50_000, "peak_eod_balance": 50_000,
             "open_contracts": 0}
    tight = dict(roomy, balance=48_050, peak_eod_balance=50_000)  # $50 above the trailing threshold
    traded = 0
    for row in range(len(dataset.frame) - 400, len(dataset.frame) - 10, 13):
        request = _bars_request(dataset.frame, row, needed)
        free = predictor.ensemble_predict(request)
        out = predictor.ensemble_predict({**request, "account": roomy})
        assert out["p_win_long"] == free["p_win_long"] and out["ensemble_recommendation"] in (
            free["ensemble_recommendation"], "HOLD")
        if out["ensemble_recommendation"] != "HOLD":
            traded += 1
            risk = out["risk"]
            assert 0 <= out["suggested_contracts"] <= min(free["suggested_contracts"], risk["suggested_contracts"])
            assert risk["suggested_contracts"] <= risk["max_contracts_allowed"] <= 5
        squeezed = predictor.ensemble_predict({**request, "account": tight})
        if free["ensemble_recommendation"] != "HOLD":
            assert squeezed["ensemble_recommendation"] == "HOLD" and squeezed["suggested_contracts"] == 0
            assert squeezed["risk"]["blocked"] and any("blocked by the account's rules" in w
                                                       for w in squeezed["warnings"])
            assert squeezed["confidence_score"] == pytest.approx(
                1 - free["p_win_long"] - free["p_win_short"], abs=1e-12)
    assert traded >= 3


@pytest.mark.parametrize("value", ["abc", "1.5", "-0.1", "nan", ""])
def test_a_bad_threshold_is_a_clear_error(value, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from trademl.cli import app

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["backtest", "--synthetic", "2000", "--threshold", value])
    assert result.exit_code != 0 and "--threshold must be a probability in [0, 1) or auto" in result.output
    assert "Traceback" not in result.output


def test_auto_needs_a_stacker_where_there_is_none():
    """backtest-signals trades a signals file: no stacker chose a threshold, so "auto" is refused."""
    from trademl.config import fixed_threshold
    from trademl.errors import TradeMLError

    assert fixed_threshold(0.6) == 0.6
    with pytest.raises(TradeMLError, match="chosen by the stacker"):
        fixed_threshold("auto")
