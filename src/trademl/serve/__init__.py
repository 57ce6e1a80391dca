"""The HTTP service of the ensemble predictor (`trademl serve`): see app.py."""
