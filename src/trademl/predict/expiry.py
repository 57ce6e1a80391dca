"""How old the served models are, and when that is too old ([retrain] expiration_hours).

A model's age is the time since its manifest's ``created_at``, the moment it was trained. A
market drifts away from what a model learned; past ``expiration_hours`` every prediction says
so in its ``warnings``, and /metrics carries the age and an expired flag per kind, so a bot or
an alert sees a model `trademl retrain` has not replaced (or never promoted over) in time.
"""

from __future__ import annotations

from datetime import datetime, timezone


def model_ages_hours(created: dict, now: datetime | None = None) -> dict[str, float | None]:
    """Hours since each kind's ``created_at`` (ISO text); None where it is missing or unreadable."""
    now = now or datetime.now(timezone.utc)
    ages = {}
    for kind, stamp in created.items():
        try:
            made = datetime.fromisoformat(str(stamp))
        except (TypeError, ValueError):
            ages[kind] = None
            continue
        made = made if made.tzinfo is not None else made.replace(tzinfo=timezone.utc)
        ages[kind] = (now - made).total_seconds() / 3600.0
    return ages


def is_expired(age_hours: float | None, expiration_hours: float) -> bool:
    """Past the expiration (0: never expires; an unknown age is not called expired)."""
    return expiration_hours > 0 and age_hours is not None and age_hours > expiration_hours


def expiry_warnings(created: dict, expiration_hours: float, now: datetime | None = None) -> list[str]:
    """One warning per served kind older than ``expiration_hours``, naming its age."""
    return [f"{kind} is {age:.0f} h old, past [retrain] expiration_hours = {expiration_hours:g}: retrain it "
            "(`trademl retrain`)"
            for kind, age in model_ages_hours(created, now).items() if is_expired(age, expiration_hours)]
