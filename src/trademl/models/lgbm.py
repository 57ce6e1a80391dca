"""LightGBM win models: ``lgb_5m`` and ``lgb_30m``.

One binary classifier per horizon answers "will this trade, entered at the next open and
closed h bars later, make money after costs?" for a long or a short: every labelled bar
gives two rows, the features plus ``side`` = +1 with label ``win_long_h`` and the same
features plus ``side`` = -1 with label ``win_short_h``. A decision log, when the dataset
carries one, gives one row per decision with its own side and realized win instead.

Training is honest by construction:

1. Purged, embargoed walk-forward folds (``trademl.data.splits``). In each fold the last
   part of the training rows (purged again) is the validation set for early stopping, so
   the test block never chooses the number of trees that are scored on it.
2. The test-block predictions of all folds are the out-of-sample (OOS) predictions. An
   isotonic map fitted on them calibrates the served probabilities; the OOS figures use
   a cross-fitted map (each fold calibrated by the other folds), never its own labels.
3. The verdict: the model beats the base rate only if the AUC confidence interval
   excludes 0.5 AND its calibrated OOS log-loss is below that of always predicting the
   training base rate.
4. The final model is refit on every row with the median best iteration of the folds,
   exported to ONNX (serving needs no lightgbm) and checked against LightGBM to 1e-6.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from trademl.data.reference import feature_reference
from trademl.models.novelty import NOVELTY_FILE, NoveltyReference
from trademl.errors import DataError, InsufficientDataError, ModelStoreError, SchemaError
from trademl.models.base import skill
from trademl.models.calibration import (
    IsotonicCalibrator,
    auc_with_ci,
    brier,
    clustered_mean_ci,
    expected_calibration_error,
    log_loss,
    reliability_table,
    row_log_loss,
)

SIDE_COLUMN = "side"
ONNX_INPUT = "input"
ONNX_PROBABILITIES = "probabilities"
MODEL_TEXT, MODEL_ONNX = "model.txt", "model.onnx"
CALIBRATION_FILE, IMPORTANCE_FILE = "calibration.json", "feature_importance.json"
ONNX_TOLERANCE = 1e-6
# Rows of one cluster share label windows; ~10 horizons apart they are close to independent.
CLUSTER_HORIZONS = 10

Progress = Callable[[str, int, int], None]  # (what, done, total)


def kind_for(horizon: int) -> str:
    """'lgb_5m' for 5 bars, 'lgb_30m' for 30: the names the ensemble and the guide use."""
    return f"lgb_{int(horizon)}m"


# --- rows ------------------------------------------------------------------------------


@dataclass
class WinRows:
    """The training rows of one horizon, in time order."""

    X: np.ndarray  # float32 [m, F + 1]; the last column is the side (+1 long, -1 short)
    y: np.ndarray  # float64 0/1
    bar: np.ndarray  # int64: the dataset row (bar) each training row belongs to
    n_bars: int  # rows of the dataset: the time axis the folds are cut on
    timestamps: object  # DatetimeIndex of the dataset rows
    source: str  # "bars" (both sides of every labelled bar) or "decisions"


def win_rows(dataset, horizon: int, source: str = "auto") -> WinRows:
    """Training rows from ``source``: "bars" (both sides of every labelled bar), "decisions"
    (the decision log joined into the dataset) or "auto" (decisions when there are any)."""
    if source not in ("auto", "bars", "decisions"):
        raise ValueError(f"source must be auto, bars or decisions, not {source!r}")
    decisions = getattr(dataset, "decisions", None)
    has_decisions = decisions is not None and len(decisions) > 0
    if source == "decisions" and not has_decisions:
        raise DataError("the dataset carries no decision log", where=_dataset_where(dataset),
                        hint="build it with `trademl data build --decisions LOG`")
    if has_decisions and source != "bars":
        return _rows_from_decisions(dataset, decisions, horizon)
    frame = dataset.frame
    names = dataset.feature_names
    where = _dataset_where(dataset)
    labels = [f"win_long_{horizon}", f"win_short_{horizon}"]
    missing = [c for c in labels if c not in frame.columns]
    if missing:
        raise DataError(
            f"no labels {missing} in the dataset (it has horizons {getattr(dataset, 'horizons', '?')})",
            where=where, hint=f"rebuild it with {horizon} in [data] horizons",
        )
    win_long = frame[labels[0]].to_numpy(np.float64)
    win_short = frame[labels[1]].to_numpy(np.float64)
    labelled = np.flatnonzero(np.isfinite(win_long) & np.isfinite(win_short))
    X = dataset.X[labelled]
    _check_features_present(X, names, where)
    m, f = len(labelled), len(names)
    stacked = np.empty((2 * m, f + 1), dtype=np.float32)
    # Long and short of one bar sit next to each other, so the rows stay in time order.
    stacked[0::2, :f] = X
    stacked[0::2, f] = 1.0
    stacked[1::2, :f] = X
    stacked[1::2, f] = -1.0
    y = np.empty(2 * m)
    y[0::2], y[1::2] = win_long[labelled], win_short[labelled]
    return WinRows(stacked, y, np.repeat(labelled, 2), len(frame), frame.index, "bars")


def _rows_from_decisions(dataset, decisions, horizon: int) -> WinRows:
    """One row per decision of the bot: the features of its bar, its side, its realized win.

    The joined frame (``trademl.data.decisions.join_decisions``) names the dataset row of
    each decision (``bar_index``, else its ``timestamp`` is looked up). The label is the
    realized outcome where the log gave one (``label_source`` "outcome": ``win``), else the
    bar label of the decision's side at this horizon (``win_{horizon}``).
    """
    where = f"{_dataset_where(dataset)} (decision log)"
    frame = dataset.frame
    names = dataset.feature_names
    win_col = f"win_{horizon}" if f"win_{horizon}" in decisions.columns else "win"
    for col in (SIDE_COLUMN, win_col):
        if col not in decisions.columns:
            raise DataError(f"the joined decision log has no {col!r} column", where=where)
    if "bar_index" in decisions.columns:
        bar = decisions["bar_index"].to_numpy(np.int64)
    else:
        stamps = decisions["timestamp"] if "timestamp" in decisions.columns else decisions.index
        bar = frame.index.get_indexer(stamps)
        if (bar < 0).any():
            raise DataError(f"{int((bar < 0).sum())} decisions have no bar in the dataset", where=where)
    side = _side_values(decisions[SIDE_COLUMN], where)
    y = decisions[win_col].to_numpy(np.float64)
    if "label_source" in decisions.columns and "win" in decisions.columns:
        y = np.where(decisions["label_source"].to_numpy() == "outcome", decisions["win"].to_numpy(np.float64), y)
    ok = np.isfinite(y) & (bar >= 0)
    order = np.argsort(bar[ok], kind="stable")
    bar, side, y = bar[ok][order], side[ok][order], y[ok][order]
    X = dataset.X[bar]
    _check_features_present(X, names, where)
    return WinRows(np.column_stack([X, side.astype(np.float32)]), y, bar, len(frame), frame.index, "decisions")


def _side_values(column, where: str) -> np.ndarray:
    """+1/-1 from numbers or from words (long/buy, short/sell)."""
    if column.dtype.kind in "if":
        side = np.sign(column.to_numpy(np.float64))
    else:
        words = column.astype(str).str.strip().str.lower()
        side = np.select([words.isin(["long", "buy", "1", "+1"]), words.isin(["short", "sell", "-1"])], [1.0, -1.0], 0.0)
    if (side == 0).any():
        bad = int(np.flatnonzero(side == 0)[0])
        raise DataError(f"side must be long/short (+1/-1); row {bad} has {column.iloc[bad]!r}", where=where)
    return side


def _check_features_present(X: np.ndarray, names, where: str) -> None:
    all_nan = [n for n, ok in zip(names, np.isfinite(X).any(axis=0)) if not ok]
    if all_nan:
        raise DataError(
            f"features {all_nan} are NaN on every labelled row",
            where=where, hint="the dataset is too short for their warm-up, or a source column is empty",
        )


def _dataset_where(dataset) -> str:
    path = getattr(dataset, "path", None)
    return str(path) if path else "dataset"


def check_dataset_schema(dataset, expected=None) -> None:
    """The dataset must hold the features its manifest names, as this trademl computes them.

    A dataset built by another version of the feature library (or edited after the build)
    would train a model on features that serving never computes; ``expected`` (a
    FeatureSchema or its dict) additionally pins the schema, e.g. that of models already
    serving side by side.
    """
    from trademl.data.features.schema import PASSTHROUGH, FeatureSchema

    where = _dataset_where(dataset)
    recorded = dataset.schema  # from_dict refuses a hash that does not match the names
    missing = [n for n in recorded.names if n not in dataset.frame.columns]
    if missing:
        raise SchemaError(f"the dataset lacks features {missing} named by its schema", where=where)
    extras = [n for n in recorded.names if recorded.params.get(n) == PASSTHROUGH]
    FeatureSchema.for_names(recorded.names, extras).check_compatible(
        recorded, where=f"{where} (built with another feature library than this trademl's)"
    )
    if expected is not None:
        if isinstance(expected, dict):
            expected = FeatureSchema.from_dict(expected)
        expected.check_compatible(recorded, where=where)


def check_trainable(rows: WinRows, min_rows: int, kind: str) -> None:
    """Enough rows, and both outcomes present: otherwise a clear error, not a silly model."""
    if len(rows.y) < min_rows:
        raise InsufficientDataError(
            f"{kind} needs at least {min_rows} labelled rows to train honestly; the dataset has {len(rows.y)}",
            where=kind, hint="use more bars, or lower [lgbm] min_rows",
        )
    rate = float(rows.y.mean())
    if rate in (0.0, 1.0):
        outcome = "wins" if rate == 1.0 else "losses"
        raise InsufficientDataError(f"all {len(rows.y)} labels are {outcome}: one class only, nothing to learn", where=kind)


# --- fitting ---------------------------------------------------------------------------


def booster_params(cfg) -> dict:
    return {
        "objective": "binary",
        "metric": "binary_logloss",
        "num_leaves": cfg.num_leaves,
        "learning_rate": cfg.learning_rate,
        "min_data_in_leaf": cfg.min_child_samples,
        "feature_fraction": cfg.feature_fraction,
        "bagging_fraction": cfg.bagging_fraction,
        "bagging_freq": cfg.bagging_freq,
        "lambda_l2": cfg.lambda_l2,
        "seed": cfg.seed,
        "deterministic": True,
        "force_col_wise": True,
        "num_threads": cfg.num_threads,
        "verbose": -1,
    }


def _fit(X, y, names, cfg, rounds: int, valid=None):
    import lightgbm as lgb

    train = lgb.Dataset(X, y, feature_name=names, free_raw_data=True)
    if valid is None:
        return lgb.train(booster_params(cfg), train, num_boost_round=rounds)
    dvalid = lgb.Dataset(valid[0], valid[1], reference=train)
    return lgb.train(
        booster_params(cfg), train, num_boost_round=rounds, valid_sets=[dvalid],
        callbacks=[lgb.early_stopping(cfg.early_stopping_rounds, verbose=False)],
    )


@dataclass
class FoldResult:
    number: int
    test_rows: np.ndarray  # positions in WinRows
    train_base_rate: float
    best_iteration: int
    raw: np.ndarray  # LightGBM probabilities on the test rows
    train_rows: int
    valid_rows: int
    last_train_bar: int  # the latest bar whose label any fitted or validation row used


def walk_forward(rows: WinRows, horizon: int, cfg, names, progress: Progress | None = None,
                 on_fold: Callable[[FoldResult], None] | None = None) -> list[FoldResult]:
    """Fit one booster per fold (early-stopped on a purged validation tail), predict its test block.
    ``on_fold`` sees each fold's result as it is done (a tuning trial reports it, and may stop)."""
    from trademl.data.splits import train_valid_split, walk_forward_splits

    embargo = horizon if cfg.embargo_bars is None else cfg.embargo_bars
    folds = walk_forward_splits(rows.n_bars, cfg.n_folds, horizon, embargo)
    results = []
    for fold in folds:
        if progress:
            progress(f"{kind_for(horizon)} fold {fold.number + 1}/{len(folds)}", fold.number, len(folds) + 1)
        train_bars = np.intersect1d(fold.train, rows.bar)  # labelled bars only
        fit_bars, valid_bars = train_valid_split(train_bars, cfg.valid_fraction, horizon)
        fit = np.flatnonzero(np.isin(rows.bar, fit_bars))
        valid = np.flatnonzero(np.isin(rows.bar, valid_bars))
        test = np.flatnonzero(np.isin(rows.bar, fold.test))
        if len(test) == 0 or len(valid) == 0:
            continue
        y_fit = rows.y[fit]
        if y_fit.min() == y_fit.max():
            raise InsufficientDataError(
                f"fold {fold.number + 1} has one class only in its {len(fit)} training rows",
                where=kind_for(horizon), hint="use more data or fewer folds",
            )
        booster = _fit(rows.X[fit], y_fit, names, cfg, cfg.n_estimators, valid=(rows.X[valid], rows.y[valid]))
        best = int(booster.best_iteration or booster.current_iteration())
        raw = booster.predict(rows.X[test], num_iteration=best)
        train_rate = float(rows.y[np.r_[fit, valid]].mean())
        last_train_bar = int(rows.bar[np.r_[fit, valid]].max())
        results.append(FoldResult(len(results), test, train_rate, best, raw, len(fit), len(valid), last_train_bar))
        if on_fold is not None:
            on_fold(results[-1])
    if not results:
        raise InsufficientDataError(
            f"no walk-forward fold of {rows.n_bars} bars has labelled test and validation rows",
            where=kind_for(horizon), hint="use more data or fewer folds",
        )
    return results


# --- scoring ---------------------------------------------------------------------------


def _scores(p, y, base_rate: np.ndarray) -> dict:
    return {
        "rows": int(len(y)),
        "base_rate": float(np.mean(y)),
        "auc": auc_with_ci(p, y)[0],
        "log_loss": log_loss(p, y),
        "brier": brier(p, y),
        "ece": expected_calibration_error(p, y),
        "base_log_loss": log_loss(base_rate, y),
        "base_brier": brier(base_rate, y),
    }


def cross_fitted_calibration(results: list[FoldResult], y: np.ndarray, cfg) -> list[np.ndarray]:
    """Calibrated test probabilities of each fold from a map fitted on the OTHER folds."""
    out = []
    for r in results:
        others = [o for o in results if o.number != r.number] or [r]  # one fold: no honest choice left
        cal = IsotonicCalibrator.fit(
            np.concatenate([o.raw for o in others]), np.concatenate([y[o.test_rows] for o in others]),
            max_bins=cfg.calibration_bins,
        )
        out.append(cal.apply(r.raw))
    return out


def score_out_of_sample(rows: WinRows, results: list[FoldResult], horizon: int, cfg) -> dict:
    """Metrics per fold and over all OOS rows, the reliability table and the verdict."""
    calibrated = cross_fitted_calibration(results, rows.y, cfg)
    folds = []
    for r, cal in zip(results, calibrated):
        y = rows.y[r.test_rows]
        base = np.full(len(y), r.train_base_rate)
        stamps = rows.timestamps[rows.bar[r.test_rows[[0, -1]]]]
        folds.append({
            "fold": r.number + 1, "train_rows": r.train_rows, "valid_rows": r.valid_rows,
            "test_start": str(stamps[0]), "test_end": str(stamps[-1]), "best_iteration": r.best_iteration,
            "train_base_rate": r.train_base_rate, **_scores(cal, y, base),
            "raw_log_loss": log_loss(r.raw, y),
        })
    test = np.concatenate([r.test_rows for r in results])
    y = rows.y[test]
    p = np.concatenate(calibrated)
    raw = np.concatenate([r.raw for r in results])
    base = np.concatenate([np.full(len(r.test_rows), r.train_base_rate) for r in results])
    clusters = rows.bar[test] // (CLUSTER_HORIZONS * (horizon + 1))
    auc, lo, hi = auc_with_ci(p, y, clusters)
    gain, gain_lo, gain_hi = clustered_mean_ci(row_log_loss(base, y) - row_log_loss(p, y), clusters)
    oos = {**_scores(p, y, base), "auc": auc, "auc_ci": [lo, hi], "log_loss_gain": gain,
           "log_loss_gain_ci": [gain_lo, gain_hi], "raw_auc": auc_with_ci(raw, y)[0],
           "raw_log_loss": log_loss(raw, y), "raw_ece": expected_calibration_error(raw, y)}
    judged = verdict(oos)
    return {
        "horizon": horizon,
        "rows_source": rows.source,
        "folds": folds,
        "out_of_sample": oos,
        "reliability": reliability_table(p, y),
        "verdict": judged,
        "validation_skill": win_skill(oos, judged["text"]),
        "headline": {"auc": auc, "log_loss": oos["log_loss"],
                     "verdict": "beats base rate" if judged["beats_base_rate"] else "not above base rate"},
    }


def win_skill(oos: dict, note: str | None = None) -> dict:
    """Gini (2 AUC - 1) of the calibrated out-of-fold win probabilities, with its interval."""
    lo, hi = oos["auc_ci"]
    return skill(2.0 * oos["auc"] - 1.0, "Gini (2 AUC - 1) of the calibrated out-of-fold win probabilities",
                 interval=(2.0 * lo - 1.0, 2.0 * hi - 1.0), note=note)


def verdict(oos: dict) -> dict:
    """Plain words: does the model know more than the base rate, out of sample?

    Both must hold, each beyond its ~95% interval with serially correlated rows counted
    as clusters: the AUC interval excludes 0.5 (it ranks wins above losses), and the
    log-loss gain over always predicting the training base rate is above 0 (its
    probabilities are better, not just ordered).
    """
    lo, hi = oos["auc_ci"]
    g_lo, g_hi = oos["log_loss_gain_ci"]
    separates = bool(np.isfinite(lo) and lo > 0.5)
    sharper = bool(np.isfinite(g_lo) and g_lo > 0)
    beats = separates and sharper
    where_half = "excludes 0.5" if separates else "is below 0.5 (worse than chance)" if hi < 0.5 else "includes 0.5"
    auc_text = f"AUC {oos['auc']:.3f} (95% CI {lo:.3f}..{hi:.3f}) {where_half}"
    loss_text = (
        f"log-loss {oos['log_loss']:.4f} vs {oos['base_log_loss']:.4f} for the base rate {oos['base_rate']:.3f}, "
        f"gain {oos['log_loss_gain']:.5f} (95% CI {g_lo:.5f}..{g_hi:.5f}) {'above' if sharper else 'not above'} 0"
    )
    head = "beats the base rate" if beats else "does NOT beat the base rate"
    return {"beats_base_rate": beats, "text": f"{head}: {auc_text}; {loss_text}"}


# --- export ----------------------------------------------------------------------------


def float32_exact(booster):
    """The same booster with every split threshold moved down to a float32 value.

    LightGBM compares a feature with a double threshold (``x <= t``); ONNX's tree ensemble
    stores float32 thresholds, rounded to nearest, so a float32 input lying between t and
    its rounding could take the other branch (seen: 2e-3 probability differences). For a
    float32 x, ``x <= t`` holds exactly when ``x <= floor32(t)``, the largest float32 not
    above t: with that threshold both runtimes take the same branch on every float32 input,
    and the booster's own predictions on float32 features do not change at all.
    """
    import lightgbm as lgb

    def floor32(text: str) -> str:
        t = np.array([float(v) for v in text.split()])
        f = t.astype(np.float32)
        above = f.astype(np.float64) > t
        f[above] = np.nextafter(f[above], np.float32(-np.inf))
        return " ".join(repr(float(v)) for v in f)

    lines = []
    for line in booster.model_to_string().split("\n"):
        if line.startswith("threshold="):
            line = "threshold=" + floor32(line[len("threshold="):])
        elif line.startswith("tree_sizes="):
            continue  # byte offsets of the old text; without them LightGBM parses tree by tree
        lines.append(line)
    return lgb.Booster(model_str="\n".join(lines))


def export_onnx(booster, n_inputs: int) -> bytes:
    """The booster as an ONNX graph: float32 [n, n_inputs] -> probabilities [n, 2]."""
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    model = convert_lightgbm(
        booster, initial_types=[(ONNX_INPUT, FloatTensorType([None, n_inputs]))], zipmap=False, target_opset=15
    )
    return model.SerializeToString()


def onnx_probabilities(onnx_bytes: bytes, X: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # the converter declares the label output [1]; ORT warns on every run
    session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    return session.run([ONNX_PROBABILITIES], {ONNX_INPUT: np.ascontiguousarray(X, dtype=np.float32)})[0][:, 1]


def check_onnx_parity(booster, onnx_bytes: bytes, X: np.ndarray, kind: str) -> float:
    """Largest |ONNX - LightGBM| probability on X; above ONNX_TOLERANCE nothing is stored."""
    diff = float(np.max(np.abs(onnx_probabilities(onnx_bytes, X) - booster.predict(X)))) if len(X) else 0.0
    if diff > ONNX_TOLERANCE:
        raise ModelStoreError(f"ONNX export differs from LightGBM by {diff:.2e} (> {ONNX_TOLERANCE})", where=kind)
    return diff


def feature_importance(booster, names) -> list[dict]:
    gain = booster.feature_importance("gain")
    split = booster.feature_importance("split")
    rows = [{"feature": n, "gain": float(g), "splits": int(s)} for n, g, s in zip(names, gain, split)]
    return sorted(rows, key=lambda r: -r["gain"])


# --- the whole training of one horizon -------------------------------------------------


@dataclass
class WinModelReport:
    kind: str
    horizon: int
    metrics: dict
    stored: object = None  # StoredModel, when a store was given
    importance: list = field(default_factory=list)
    calibrator: IsotonicCalibrator | None = None  # the served map, fitted on all OOS rows
    oos_raw: np.ndarray | None = None  # raw OOS probabilities and their labels, in time order
    oos_labels: np.ndarray | None = None


def train_win_model(dataset, horizon: int, config, store=None, progress: Progress | None = None,
                    expected_schema=None, source: str = "auto") -> WinModelReport:
    """Cross-validate, calibrate, refit, export and (with a store) save one win model."""
    cfg = config.lgbm
    kind = kind_for(horizon)
    check_dataset_schema(dataset, expected_schema)
    rows = win_rows(dataset, horizon, source)
    check_trainable(rows, cfg.min_rows, kind)
    names = list(dataset.feature_names) + [SIDE_COLUMN]
    results = walk_forward(rows, horizon, cfg, names, progress)
    metrics = score_out_of_sample(rows, results, horizon, cfg)
    oof_raw = np.concatenate([r.raw for r in results])
    oof_y = np.concatenate([rows.y[r.test_rows] for r in results])
    calibrator = IsotonicCalibrator.fit(oof_raw, oof_y, max_bins=cfg.calibration_bins)
    if progress:
        progress(f"{kind} final fit", len(results), len(results) + 1)
    rounds = max(1, int(np.median([r.best_iteration for r in results])))
    booster = float32_exact(_fit(rows.X, rows.y, names, cfg, rounds))
    onnx_bytes = export_onnx(booster, len(names))
    check_rows = rows.X[np.linspace(0, len(rows.X) - 1, min(len(rows.X), 5000)).astype(int)]
    metrics["onnx_max_abs_diff"] = check_onnx_parity(booster, onnx_bytes, check_rows, kind)
    metrics["final_iterations"] = rounds
    importance = feature_importance(booster, names)
    report = WinModelReport(kind, horizon, metrics, importance=importance, calibrator=calibrator,
                            oos_raw=oof_raw, oos_labels=oof_y)
    if store is not None:
        report.stored = _save(store, kind, horizon, dataset, rows, config, metrics, booster, onnx_bytes,
                              calibrator, importance)
    if progress:
        progress(f"{kind} done", len(results) + 1, len(results) + 1)
    return report


def _save(store, kind, horizon, dataset, rows, config, metrics, booster, onnx_bytes, calibrator, importance):
    stamps = rows.timestamps[rows.bar[[0, -1]]]
    span = {"start": str(stamps[0]), "end": str(stamps[-1]), "rows": int(len(rows.y)),
            "bars": int(len(np.unique(rows.bar))), "source": rows.source,
            "dataset": str(getattr(dataset, "path", None) or dataset.manifest.get("source"))}
    model_info = {
        "horizon": horizon, "inputs": list(dataset.feature_names) + [SIDE_COLUMN], "side_column": SIDE_COLUMN,
        "side_coding": {"long": 1, "short": -1}, "onnx_input": ONNX_INPUT, "onnx_output": ONNX_PROBABILITIES,
        "symbol": dataset.manifest.get("symbol"),
    }
    # Training distribution of the features (one row per bar, not per side) for drift checks.
    one_per_bar = rows.X[np.unique(rows.bar, return_index=True)[1], :-1]
    reference = feature_reference(one_per_bar, dataset.feature_names)
    novelty = NoveltyReference.fit(one_per_bar, dataset.feature_names, seed=config.lgbm.seed,
                                   tick_size=dataset.spec.tick_size)
    import lightgbm

    try:
        with store.writer(kind, feature_schema=dataset.manifest["feature_schema"], training_span=span,
                          config={"lgbm": config.lgbm.model_dump(), "costs": config.costs.model_dump()},
                          metrics=metrics, model=model_info, feature_reference=reference,
                          contract=dataset.manifest.get("contract")) as w:
            booster.save_model(str(w.path / MODEL_TEXT))
            (w.path / MODEL_ONNX).write_bytes(onnx_bytes)
            _write_json(w.path / CALIBRATION_FILE, calibrator.to_dict())
            _write_json(w.path / IMPORTANCE_FILE, importance)
            novelty.save(w.path / NOVELTY_FILE)
    except (OSError, lightgbm.basic.LightGBMError) as e:
        # a full disk: the store's writer has already removed its half-written folder
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0][:200]
        raise ModelStoreError(f"cannot write the model: {reason}", where=str(store.root)) from None
    return w.stored


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2))


def train_lgbm(dataset, config, store=None, horizons=None, progress: Progress | None = None,
               expected_schema=None, source: str = "auto") -> list[WinModelReport]:
    """lgb_5m and lgb_30m (or the horizons given) on one dataset."""
    horizons = list(horizons or [h for h in (5, 30) if h in dataset.horizons] or dataset.horizons)
    return [train_win_model(dataset, h, config, store, progress, expected_schema, source) for h in horizons]


# --- presentation ----------------------------------------------------------------------


def report_tables(report: WinModelReport, with_spans: bool = True):
    """A rich table, one row per fold then the out-of-sample row; the verdict text beside it.

    Each score sits next to the same score of the base-rate predictor (model/base).
    """
    from rich import box
    from rich.table import Table

    m = report.metrics
    t = Table(title=f"{report.kind}: win probability at {report.horizon} bars ({m['rows_source']} rows)",
              box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False)
    t.add_column("fold", no_wrap=True)
    if with_spans:
        t.add_column("test span")
    for col in ("rows", "trees", "AUC", "log-loss\nmodel/base", "Brier\nmodel/base", "ECE", "win\nrate"):
        t.add_column(col, justify="right", no_wrap=True)
    for f in m["folds"]:
        span = [f"{f['test_start'][:10]}..{f['test_end'][:10]}"] if with_spans else []
        t.add_row(str(f["fold"]), *span, f"{f['rows']:,}", str(f["best_iteration"]), *_metric_cells(f))
    o = m["out_of_sample"]
    span = ["all folds"] if with_spans else []
    t.add_row("OOS", *span, f"{o['rows']:,}", str(m["final_iterations"]), *_metric_cells(o), style="bold")
    return t, m["verdict"]["text"], m["verdict"]["beats_base_rate"]


def _metric_cells(d: dict) -> list[str]:
    return [f"{d['auc']:.3f}", f"{d['log_loss']:.4f}/{d['base_log_loss']:.4f}",
            f"{d['brier']:.4f}/{d['base_brier']:.4f}", f"{d['ece']:.3f}", f"{d['base_rate']:.3f}"]


def print_reports(reports: list[WinModelReport], console) -> None:
    for r in reports:
        table, text, beats = report_tables(r, with_spans=console.width >= 110)
        console.print(table)
        console.print(f"[{'green' if beats else 'yellow'}]{r.kind} {text}[/]")
        top = ", ".join(f"{i['feature']}" for i in r.importance[:5])
        console.print(f"  top features by gain: {top}")
        if r.stored is not None:
            console.print(f"  stored: {r.stored.path}")
