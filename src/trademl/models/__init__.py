"""Trained models and the versioned store they live in."""
