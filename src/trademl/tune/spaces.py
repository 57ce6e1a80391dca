"""The search space of a kind: ``[tune.<kind>]`` ranges turned into Optuna suggestions."""

from __future__ import annotations

from trademl.config import Config, ParamRange

KINDS = ("lgbm", "lstm", "ppo")


def suggest(trial, space: dict[str, ParamRange]) -> dict:
    """One value per setting of ``space``, asked of the Optuna ``trial``."""
    params = {}
    for name, r in space.items():
        if r.choices is not None:
            params[name] = trial.suggest_categorical(name, list(r.choices))
        elif r.integer:
            params[name] = trial.suggest_int(name, int(r.low), int(r.high), log=r.log)
        else:
            params[name] = trial.suggest_float(name, r.low, r.high, log=r.log)
    return params


def with_params(config: Config, kind: str, params: dict) -> Config:
    """A copy of ``config`` with ``params`` set in the kind's section (validated as the file would be)."""
    from trademl.config import with_overrides

    return with_overrides(config, {kind: dict(params)})
