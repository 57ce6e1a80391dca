"""Fitting the stacked ensemble (``trademl.models.stacker``) on the base models' out-of-fold votes.

``stack_split`` cuts a training set in two: the base models train on the first rows, and the
stacker on the last ``[ensemble] stack_share`` of them, after a purge gap of the longest label
horizon plus the embargo (no label of a base model's training row reaches into the stacker's
rows). ``train_stacker`` has the stored base models' serving runtimes vote on those rows,
fits the stacker there (scikit-learn, training time only) and stores it as kind ``stacker``
with the versions of the base models it was fitted on: the predictor uses it only beside
exactly those versions.
"""

from __future__ import annotations

import math

import numpy as np

from trademl.errors import InsufficientDataError, ModelStoreError
from trademl.models import stacker as st

METHOD = ("per side: each kind's view weighted by its own logistic slope (non-negative, shrunk by its "
          "cluster-robust z), an L2 logistic regression on the combined score, isotonic on cross-fitted scores; "
          "expected P&L isotonic in the probability")


def stack_split(dataset, config):
    """(rows the base models train on, rows the stacker fits on) or (all rows, None, why not)."""
    ens = config.ensemble
    n = len(dataset.frame)
    n_stack = int(n * ens.stack_share)
    horizon = max(dataset.horizons)
    gap = horizon + (horizon if config.lgbm.embargo_bars is None else config.lgbm.embargo_bars)
    if n_stack < ens.min_stack_rows or n - n_stack - gap < ens.min_stack_rows:
        return np.arange(n), None, (f"{n:,} training rows leave {n_stack:,} for the stacker, fewer than "
                                    f"[ensemble] min_stack_rows = {ens.min_stack_rows:,}: the models' vote decides")
    return np.arange(n - n_stack - gap), np.arange(n - n_stack, n), None


def stack_horizon(dataset, config) -> int:
    """The trade the stacker's probability is about: [ensemble] horizon, or the shortest labelled one."""
    h = config.ensemble.horizon
    return h if h in dataset.horizons else min(dataset.horizons)


def trade_outcomes(dataset, rows: np.ndarray, horizon: int, config):
    """(won_long, won_short, pnl_long, pnl_short) of the rows' trades (NaN where unknown)."""
    from trademl.market.execution import ExecutionModel

    frame = dataset.frame.iloc[rows]
    cost = ExecutionModel.from_config(dataset.spec, config.costs, config.account.max_position_size).round_trip_cost
    pnl_long = frame[f"pnl_long_{horizon}"].to_numpy(np.float64)
    # the short's gross is the long's negated; both pay the round trip
    pnl_short = -(pnl_long + cost) - cost
    return (frame[f"win_long_{horizon}"].to_numpy(np.float64), frame[f"win_short_{horizon}"].to_numpy(np.float64),
            pnl_long, pnl_short)


def realised_pnl(action: np.ndarray, pnl_long: np.ndarray, pnl_short: np.ndarray) -> np.ndarray:
    """The per-bar P&L of the decisions: that side's trade where BUY / SELL, 0 where HOLD."""
    return np.where(action == 1, pnl_long, np.where(action == 2, pnl_short, 0.0))


def best_threshold(actions_at, pnl_long, pnl_short, horizon: int = 1) -> tuple[float, dict]:
    """The auto threshold: the lowest grid threshold whose decisions were better than chance on
    the rows (at least MIN_TRADES of them, and a mean P&L above THRESHOLD_T of its standard
    errors, which count the overlap of the ``horizon``-bar trades:
    ``trademl.stats.overlapping_mean_t``), raised to a higher one only where the trades that the
    higher one drops lost money beyond THRESHOLD_T standard errors; ``NO_EDGE`` (the candidate
    holds) when none was better than chance. Returns (threshold, {threshold: per-bar Sharpe, or
    None where not better than chance}).

    Why not the grid's best Sharpe: the thresholds' Sharpes on a few thousand rows differ by
    less than their noise, so the best of five was a higher threshold more often than the test
    bars bore out (2026-12-03, three generated markets: see bench/README). A higher threshold
    has to earn its place as a test of the trades it gives up."""
    from trademl.stats import overlapping_mean_t

    scores, realised = {}, {}
    for t in st.THRESHOLD_GRID:
        action = actions_at(t)
        realised[t] = realised_pnl(action, pnl_long, pnl_short)
        sd = realised[t].std()
        sharpe = float(realised[t].mean() / sd) if sd > 0 else 0.0  # per bar, 0 where HOLD
        enough = int((action != 0).sum()) >= st.MIN_TRADES
        scores[t] = sharpe if enough and overlapping_mean_t(realised[t], horizon) > st.THRESHOLD_T else None
    usable = sorted(t for t, s in scores.items() if s is not None)
    if not usable:
        return st.NO_EDGE, scores
    chosen = usable[0]
    for t in usable[1:]:
        # what raising the threshold changes, bar by bar: minus the P&L of the trades it drops (or,
        # where only the other side still clears it, that side's trade instead)
        if overlapping_mean_t(realised[t] - realised[chosen], horizon) > st.THRESHOLD_T:
            chosen = t
    return chosen, scores


def _masked_copies(values, present, context, copies: int, seed: int, bars: np.ndarray):
    """The rows, then ``copies`` copies with each base kind dropped with DROP_PROBABILITY; the
    draw is per bar (``bars``: each row's), so a row and its mirror image lose the same kinds."""
    rng = np.random.default_rng(seed)
    out_v, out_p = [values], [present]
    for _ in range(copies):
        kept = present & (rng.random((bars.max() + 1, present.shape[1])) >= st.DROP_PROBABILITY)[bars]
        v = values.copy()
        v[~np.repeat(kept, 2, axis=1)] = np.nan  # a kind's two logits go with it
        out_v.append(v)
        out_p.append(kept)
    return np.concatenate(out_v), np.concatenate(out_p), np.tile(context, (copies + 1, 1))


def _logistic(X: np.ndarray, y: np.ndarray, C: float = st.L2_C):
    """(coefficients, intercept) of the L2 logistic regression (scikit-learn) of y on X."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=C, max_iter=2000).fit(X, y)
    return model.coef_[0], float(model.intercept_[0])


def view_slope(view: np.ndarray, y: np.ndarray, bars: np.ndarray) -> tuple[float, float]:
    """(slope, z) of the one-input logistic regression of y on ``view``; z's standard error is
    the cluster-robust sandwich over blocks of CLUSTER_BARS bars (``bars``: each row's bar), so
    neither the overlap of the trades' outcomes nor a slow vote's persistence counts as
    independent evidence (a 30-minute model's vote moves little from one bar to the next: on a
    few thousand bars it has a few dozen independent looks, not a few thousand)."""
    slope, intercept = _logistic(view[:, None], y, C=st.VIEW_C)
    slope = float(slope[0])
    p = st.sigmoid(intercept + slope * view)
    X = np.column_stack([np.ones_like(view), view])
    hessian_inv = np.linalg.pinv((X * (p * (1 - p))[:, None]).T @ X)
    _, cluster = np.unique(bars // st.CLUSTER_BARS, return_inverse=True)
    score = np.zeros((cluster.max() + 1, 2))
    np.add.at(score, cluster, X * (y - p)[:, None])
    variance = (hessian_inv @ (score.T @ score) @ hessian_inv)[1, 1]
    return slope, (slope / math.sqrt(variance) if variance > 0 else 0.0)


def combination_weights(X: np.ndarray, y: np.ndarray, n_kinds: int, sign: float, bars: np.ndarray) -> np.ndarray:
    """[K] each kind's weight in the combined score: the slope of a one-input logistic regression
    of y on the kind's view (its standardised buy logit less its sell logit) over the rows where it
    voted, kept only with the side's sign (``sign`` +1 long, -1 short; Breiman's non-negative
    stacking: a model is never bet against), and shrunk by its evidence: times
    ``max(0, 1 - (NOISE_Z / z)^2)``, z from ``view_slope``. A slope within NOISE_Z standard errors
    of 0 gets no weight; a clear one keeps nearly all of it. Without the shrinkage the weak and
    slow kinds (the 30-minute LightGBM, the LSTM) took weights as large as the strong ones' on
    the stacker's rows and diluted them on the test bars (2026-12-04, bench/README)."""
    weights = np.zeros(n_kinds)
    for j in range(n_kinds):
        voted = X[:, 2 * n_kinds + j] > 0.5
        if voted.sum() < st.MIN_VOTED_ROWS or len(np.unique(y[voted])) < 2:
            continue
        slope, z = view_slope(X[voted, 2 * j] - X[voted, 2 * j + 1], y[voted], bars[voted])
        if slope * sign > 0 and abs(z) > st.NOISE_Z:
            weights[j] = slope * (1.0 - (st.NOISE_Z / z) ** 2)
    return weights


def meta_regression(X: np.ndarray, y: np.ndarray, n_kinds: int, sign: float, context: bool, bars: np.ndarray):
    """(coefficients over ``design``'s columns, intercept) of the meta-model of one side.

    Two stages, because a few thousand rows cannot pay for a free regression on every input: the
    kinds' views are combined with ``combination_weights`` (one slope each, fitted alone, so two
    models that see the same edge do not fight over it), then an L2 logistic regression of y on the
    combined score, and with ``context`` on the presence flags and the context inputs too. The
    product is linear in ``design``, so it is served as one coefficient vector. ``bars``: each
    row's bar (the masked copies of a row share it)."""
    w = combination_weights(X, y, n_kinds, sign, bars)
    views = np.zeros(2 * n_kinds)
    views[0::2], views[1::2] = w, -w
    score = X[:, :2 * n_kinds] @ views
    spread = float(score.std()) or 1.0
    extra = slice(2 * n_kinds, X.shape[1]) if context else slice(0, 0)
    coef, intercept = _logistic(np.column_stack([score / spread, X[:, extra]]), y)
    out = np.zeros(X.shape[1])
    out[:2 * n_kinds] = views * coef[0] / spread
    out[extra] = coef[1:]
    return out, intercept


def cross_fitted_scores(X: np.ndarray, y: np.ndarray, bars: np.ndarray, horizon: int, fit) -> np.ndarray:
    """Out-of-fold raw scores of every row of ``X`` (``bars``: each row's bar; the masked and
    mirrored copies of a bar share it): time blocks of the bars, each scored by the regression
    ``fit(X, y, bars)`` fitted on the other blocks, less ``horizon`` bars either side of it (whose
    outcomes overlap the block's)."""
    scores = np.empty(len(X))
    edges = np.linspace(0, bars.max() + 1, st.CROSS_FIT_BLOCKS + 1).astype(int)
    for lo, hi in zip(edges[:-1], edges[1:]):
        held = (bars >= lo) & (bars < hi)
        train = (bars < lo - horizon) | (bars >= hi + horizon)
        coef, intercept = fit(X[train], y[train], bars[train])
        scores[held] = st.sigmoid(X[held] @ coef + intercept)
    return scores


def mirrored(votes: dict, rows: np.ndarray, won: dict, pnl: dict):
    """The span's rows and their mirror images (each vote's buy and sell swapped, the long's and
    the short's outcomes swapped), and each row's bar: (votes, rows, won, pnl, bars).

    Why: a span of a day or two holds the market's drift of those days, and a meta-model fitted
    on it alone learns that drift as a lean to one side (its intercepts), which the next days
    do not repeat. Fitted on the span and its mirror, the stacker reads only what the models
    say and the costs: both sides get the same map."""
    flip = lambda d: {"long": np.concatenate([d["long"], d["short"]]),  # noqa: E731
                      "short": np.concatenate([d["short"], d["long"]])}
    both = {k: np.concatenate([v, v[:, [0, 2, 1]]]) for k, v in votes.items()}
    n = len(rows)
    return both, np.concatenate([rows, rows]), flip(won), flip(pnl), np.tile(np.arange(n), 2)


def mirrored_coefficients(coef: np.ndarray, n_kinds: int) -> np.ndarray:
    """The meta-model of the other side: each kind's buy and sell logit coefficients swapped (the
    first 2K columns of ``design``), the presence flags and the context as they are."""
    out = coef.copy()
    out[0:2 * n_kinds:2], out[1:2 * n_kinds:2] = coef[1:2 * n_kinds:2], coef[0:2 * n_kinds:2]
    return out


def fit_stacker(votes: dict, rows: np.ndarray, feature_names: list[str], outcomes, *, horizon: int,
                seed: int = 0, use_context: bool = False) -> tuple[dict, dict]:
    """(the stacker's parameters, its metrics) from the base kinds' votes on the stacking rows,
    the rows' features and ``trade_outcomes``; ``use_context``: the meta-model also reads the presence
    flags and the bar's context ([ensemble] context_inputs). See ``trademl.models.stacker``."""
    from trademl.models.calibration import IsotonicCalibrator, expected_calibration_error

    won_long, won_short, pnl_long, pnl_short = outcomes
    kinds = list(votes)
    known = np.isfinite(won_long) & np.isfinite(won_short)
    n = int(known.sum())
    if n < 200:
        raise InsufficientDataError(f"the stacker has {n} rows with a known outcome, fewer than 200", where="stacker")
    votes = {k: np.asarray(v, np.float64)[known] for k, v in votes.items()}
    rows = np.asarray(rows, np.float64)[known]
    won = {"long": won_long[known], "short": won_short[known]}
    pnl = {"long": pnl_long[known], "short": pnl_short[known]}
    fit_votes, fit_rows, fit_won, fit_pnl, bar_of = mirrored(votes, rows, won, pnl)
    m = len(bar_of)
    values, present = st.raw_inputs(fit_votes, kinds, m)
    context = st.context_inputs(fit_rows, feature_names, m)
    scaling = st.Scaling.fit(values, context)
    copies = _masked_copies(values, present, context, st.MASKED_COPIES, seed, bar_of)
    X, informed = st.design(*copies, scaling), copies[1].any(axis=1)
    bars = np.tile(bar_of, st.MASKED_COPIES + 1)  # each stacked row's bar
    params = {"kinds": kinds, "horizon": int(horizon), "mean": scaling.mean.tolist(), "scale": scaling.scale.tolist(),
              "context_mean": scaling.context_mean.tolist(), "context_scale": scaling.context_scale.tolist(),
              "context_features": list(st.CONTEXT_FEATURES), "coef": {}, "intercept": {}, "calibration": {},
              "base_rate": {}, "pnl_map": {}, "average_win": {}, "average_loss": {}}
    metrics = {"rows": n, "kinds": kinds, "context_inputs": bool(use_context), "method": METHOD}
    # One fit: on the mirrored rows the short's meta-model is the long's with each kind's buy and
    # sell inputs swapped (their scalings are equal), and its probability on the span's row i is
    # the long's on that row's mirror image, row n + i.
    y = np.tile(fit_won["long"], st.MASKED_COPIES + 1)
    fit = lambda X_, y_, b_: meta_regression(X_, y_, len(kinds), 1.0, use_context, b_)  # noqa: E731
    oof = cross_fitted_scores(X, y, bars, horizon, fit)
    calibrator = IsotonicCalibrator.fit(oof[informed], y[informed])
    p = calibrator.apply(oof)
    # the expected P&L of the trade given its probability, on the same rows
    pnl_map = IsotonicCalibrator.fit(p[informed], np.tile(fit_pnl["long"], st.MASKED_COPIES + 1)[informed],
                                     probability=False)
    coef, intercept = fit(X, y, bars)
    wins, losses = fit_pnl["long"][fit_pnl["long"] > 0], fit_pnl["long"][fit_pnl["long"] <= 0]
    out_of_fold = {"long": p[:n], "short": p[n:2 * n]}  # the span's own rows, unmasked
    for side, side_coef in zip(st.SIDES, (coef, mirrored_coefficients(coef, len(kinds)))):
        params["coef"][side], params["intercept"][side] = side_coef.tolist(), intercept
        params["calibration"][side] = calibrator.to_dict()
        params["pnl_map"][side] = pnl_map.to_dict()
        params["base_rate"][side] = float(fit_won["long"].mean())  # the span's rate of a win on either side
        params["average_win"][side] = float(wins.mean()) if len(wins) else 0.0
        params["average_loss"][side] = float(-losses.mean()) if len(losses) else 0.0
        # each kind's served coefficient on its standardised buy logit (the sell logit's is its
        # negative); 0: no weight (wrong-signed, or within NOISE_Z standard errors of nothing)
        metrics[f"weights_{side}"] = dict(zip(kinds, side_coef[0:2 * len(kinds):2].tolist()))
        metrics[f"ece_{side}_out_of_fold"] = float(expected_calibration_error(out_of_fold[side], won[side]))
        metrics[f"base_rate_{side}"] = params["base_rate"][side]
    _choose_thresholds(params, metrics, out_of_fold, votes, pnl)
    return params, metrics


def _choose_thresholds(params: dict, metrics: dict, out_of_fold: dict, votes: dict, pnl: dict) -> None:
    """The auto threshold of the stacker, from its out-of-fold probabilities, and of each base
    model alone, from its own vote, on the same rows (see ``best_threshold``)."""
    runtime = st.StackerRuntime({**params, "threshold_auto": 0.5})
    e_long, e_short = runtime.expected_pnl(out_of_fold["long"], "long"), runtime.expected_pnl(out_of_fold["short"], "short")
    stacked = lambda t: st.choose_action(out_of_fold["long"], out_of_fold["short"], e_long, e_short, t)  # noqa: E731
    params["threshold_auto"], scores = best_threshold(stacked, pnl["long"], pnl["short"], params["horizon"])
    params["alone_thresholds"], alone_scores = {}, {}
    for kind, v in votes.items():
        # A model alone is the vote of one model: its argmax (ties to HOLD) with that share as its
        # confidence (``trademl.predict.decision.decide`` with one model).
        voted = np.isfinite(v).all(axis=1)
        filled = np.where(voted[:, None], v, 0.0)
        action, confidence = np.argmax(filled, axis=1), filled.max(axis=1)
        alone = lambda t, a=action, c=confidence, ok=voted: np.where(ok & (c > t), a, 0)  # noqa: E731
        params["alone_thresholds"][kind], alone_scores[kind] = best_threshold(alone, pnl["long"], pnl["short"],
                                                                              params["horizon"])
    metrics["threshold_auto"] = params["threshold_auto"]
    metrics["threshold_sharpe"] = {f"{t:g}": s for t, s in scores.items()}
    metrics["alone_threshold_sharpe"] = {k: {f"{t:g}": s for t, s in v.items()} for k, v in alone_scores.items()}
    metrics["alone_thresholds"] = params["alone_thresholds"]


def train_stacker(dataset, stored: dict, rows: np.ndarray, config, model_root):
    """Fit the stacker on ``rows`` from the votes of the ``stored`` base models and store it."""
    import json

    from trademl.models.base import ModelInputs, kind_order, open_runtime
    from trademl.models.store import ModelStore

    kinds = sorted(stored, key=kind_order)
    inputs = ModelInputs(dataset.X, rows, dataset.segments)  # no account: the PPO agent votes from flat
    votes = {k: open_runtime(stored[k]).predict(inputs).vote for k in kinds}
    horizon = stack_horizon(dataset, config)
    params, metrics = fit_stacker(votes, dataset.X[rows], dataset.feature_names,
                                  trade_outcomes(dataset, rows, horizon, config), horizon=horizon,
                                  use_context=config.ensemble.context_inputs)
    index = dataset.frame.index
    span = {"start": index[rows[0]].isoformat(), "end": index[rows[-1]].isoformat(), "rows": int(len(rows))}
    info = {"base_versions": {k: stored[k].version for k in kinds}, "horizon": horizon,
            "symbol": dataset.symbol, "method": METHOD}
    try:
        with ModelStore(model_root).writer(st.STACKER_KIND, feature_schema=dataset.manifest["feature_schema"],
                                           training_span=span, metrics=metrics, model=info,
                                           config={"ensemble": config.ensemble.model_dump()},
                                           contract=dataset.manifest.get("contract")) as w:
            (w.path / st.STACKER_FILE).write_text(json.dumps(params, allow_nan=False))
    except OSError as e:
        raise ModelStoreError(f"cannot write the stacker: {e.strerror or e}", where=str(model_root)) from None
    return w.stored
