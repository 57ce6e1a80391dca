"""Retraining: challengers trained on the latest bars, promoted over the served champion only
when they are better beyond noise.

One round (``trademl.retrain.loop.retrain_round``, what `trademl retrain --once` runs):

1. ``spans``: the newest ``[retrain] holdout`` of bar time is held out; the challenger trains on
   the ``[retrain] window`` of bar time that ends a purge gap (the longest label horizon + 1 +
   the walk-forward's embargo) before it, so no label it learned from reaches into the span;
2. the chosen families are trained on that window into a temporary store (``train_models``);
3. ``challenge``: each stored kind's challenger and the store's latest version of that kind (the
   champion the loader serves) are scored on the held-out span with the walk-forward's own
   decision rule, broker and costs (``predict_fold`` + ``run_backtest``), and a one-sided
   paired t-test of their per-session P&L difference decides (false-positive rate ``[retrain] alpha``);
4. a promoted challenger is adopted into the store, where it becomes ``latest`` and the server's
   hot reload serves it; a kept one is discarded with the temporary store;
5. ``decisions``: every decision, with its figures, test and spans, is one line of the
   append-only ``<model_root>/retrain/decisions.jsonl``.
"""
