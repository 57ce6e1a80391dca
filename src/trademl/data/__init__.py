"""Bars in, causal features, labels, decision log, splits, datasets."""
