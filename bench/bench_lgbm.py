"""Benchmark: the LightGBM win model against scikit-learn's HistGradientBoostingClassifier,
and its ONNX serving path against LightGBM's own predict.

    .venv/bin/pip install -r bench/requirements.txt   # scikit-learn
    .venv/bin/python bench/bench_lgbm.py [--bars 200000] [--edge-ic 0.1] [--repeats 200]

1. Training: the same stacked long/short rows of a synthetic market with a planted edge,
   the same purged walk-forward folds and early-stopping validation tails; trademl's
   walk-forward LightGBM vs HistGradientBoosting (same depth budget, learning rate,
   rounds and patience). Out-of-sample AUC and wall time of all folds, and the ratio.
2. Serving: one request (batch 1) and a batch of 1,024 rows through
   ``LGBMRuntime.predict_win`` (ONNX Runtime + the numpy calibration map) vs
   ``lightgbm.Booster.predict`` (raw, uncalibrated): median latency and the ratio.

Both libraries run on one thread (OpenMP spin-waiting makes two threads much slower
on a shared machine; see [lgbm] num_threads).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402


def build_rows(n_bars: int, edge_ic: float):
    from trademl.config import Config
    from trademl.data.dataset import dataset_from_bars
    from trademl.data.synthetic import synthetic_bars
    from trademl.models import lgbm

    cfg = Config()
    cfg.data.horizons = [5]
    cfg.data.extra_feature_columns = ["edge"]
    cfg.lgbm.num_threads = 1
    dataset = dataset_from_bars(synthetic_bars(n_bars, seed=21, edge_ic=edge_ic), cfg)
    return cfg, dataset, lgbm.win_rows(dataset, 5)


def sklearn_walk_forward(rows, horizon: int, cfg) -> tuple[np.ndarray, np.ndarray]:
    """The peer on exactly trademl's folds and validation tails: OOS probabilities and labels."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    from trademl.data.splits import train_valid_split, walk_forward_splits

    c = cfg.lgbm
    preds, labels = [], []
    for fold in walk_forward_splits(rows.n_bars, c.n_folds, horizon, horizon):
        train_bars = np.intersect1d(fold.train, rows.bar)
        fit_bars, valid_bars = train_valid_split(train_bars, c.valid_fraction, horizon)
        fit, valid = np.isin(rows.bar, fit_bars), np.isin(rows.bar, valid_bars)
        test = np.isin(rows.bar, fold.test)
        # the same purged validation tail for early stopping (X_val), never a random split
        model = HistGradientBoostingClassifier(
            learning_rate=c.learning_rate, max_iter=c.n_estimators, max_leaf_nodes=c.num_leaves,
            min_samples_leaf=c.min_child_samples, l2_regularization=c.lambda_l2, early_stopping=True,
            n_iter_no_change=c.early_stopping_rounds, scoring="loss", random_state=c.seed,
        )
        model.fit(rows.X[fit], rows.y[fit], X_val=rows.X[valid], y_val=rows.y[valid])
        preds.append(model.predict_proba(rows.X[test])[:, 1])
        labels.append(rows.y[test])
    return np.concatenate(preds), np.concatenate(labels)


def bench_training(cfg, dataset, rows) -> dict:
    from trademl.models import lgbm
    from trademl.models.calibration import auc_with_ci

    names = dataset.feature_names + [lgbm.SIDE_COLUMN]
    t0 = time.perf_counter()
    results = lgbm.walk_forward(rows, 5, cfg.lgbm, names)
    t_lgb = time.perf_counter() - t0
    auc_lgb = auc_with_ci(np.concatenate([r.raw for r in results]),
                          np.concatenate([rows.y[r.test_rows] for r in results]))[0]
    t0 = time.perf_counter()
    p_sk, y_sk = sklearn_walk_forward(rows, 5, cfg)
    t_sk = time.perf_counter() - t0
    return {"lgb_s": t_lgb, "sk_s": t_sk, "lgb_auc": auc_lgb, "sk_auc": auc_with_ci(p_sk, y_sk)[0]}


def _median_latency(fn, repeats: int) -> float:
    fn()  # warm
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def bench_serving(cfg, dataset, repeats: int) -> dict:
    import lightgbm as lgb

    from trademl.models import lgbm
    from trademl.models.store import ModelStore
    from trademl.models.kinds.lgbm import LGBMRuntime

    with tempfile.TemporaryDirectory() as root:
        store = ModelStore(root)
        report = lgbm.train_win_model(dataset, 5, cfg, store=store)
        stored = report.stored
        booster = lgb.Booster(model_file=str(stored.file(lgbm.MODEL_TEXT)))
        runtime = LGBMRuntime.load(stored, threads=1)
        rows = lgbm.win_rows(dataset, 5)
        out = {"trees": report.metrics["final_iterations"]}
        for batch in (1, 1024):
            X = rows.X[-batch:]
            feats, side = X[:, :-1], X[:, -1].astype(int)
            out[f"onnx_{batch}"] = _median_latency(lambda: runtime.predict_win(feats, side), repeats)
            out[f"lgb_{batch}"] = _median_latency(lambda: booster.predict(X, num_threads=1), repeats)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bars", type=int, default=200_000)
    ap.add_argument("--edge-ic", type=float, default=0.1)
    ap.add_argument("--repeats", type=int, default=200)
    args = ap.parse_args(argv)
    cfg, dataset, rows = build_rows(args.bars, args.edge_ic)
    print(f"{args.bars:,} synthetic bars (edge_ic {args.edge_ic}), {len(rows.y):,} stacked rows, "
          f"{len(dataset.feature_names) + 1} inputs")
    t = bench_training(cfg, dataset, rows)
    print(f"walk-forward training ({cfg.lgbm.n_folds} folds): trademl/LightGBM {t['lgb_s']:.2f} s, "
          f"AUC {t['lgb_auc']:.4f} | sklearn HistGradientBoosting {t['sk_s']:.2f} s, AUC {t['sk_auc']:.4f} | "
          f"time ratio sklearn/trademl {t['sk_s'] / t['lgb_s']:.2f}")
    s = bench_serving(cfg, dataset, args.repeats)
    for batch in (1, 1024):
        o, g = s[f"onnx_{batch}"], s[f"lgb_{batch}"]
        print(f"serving batch {batch:>4} ({s['trees']} trees): LGBMRuntime (ONNX + calibration) {o * 1e3:.3f} ms | "
              f"lightgbm Booster.predict {g * 1e3:.3f} ms | ratio lightgbm/runtime {g / o:.2f}")


if __name__ == "__main__":
    sys.exit(main())
