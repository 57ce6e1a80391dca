"""Monitoring: the prediction log, realized outcomes, calibration, drift and alerts."""
