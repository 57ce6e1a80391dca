"""Prop-firm risk: account rules (Topstep presets), the rules applied to a backtest, the
probability of passing, position sizing, stops and the money at risk."""
