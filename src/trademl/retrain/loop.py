"""One retraining round, the schedule that repeats it, and the table a round prints.

``retrain_round`` is the whole of `trademl retrain --once` on a dataset (see the package doc);
``retrain`` loads the bars (again each round: a live file grows between rounds) and runs the
rounds, ``every`` apart on the wall clock (``seconds_until_next``).
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from trademl.config import Config, parse_duration, resolve_config
from trademl.data.dataset import sub_dataset
from trademl.errors import ModelStoreError, TradeMLError
from trademl.models.store import ModelStore
from trademl.models.train_all import check_families, train_models
from trademl.retrain.challenge import MIN_SESSIONS, TEST_NAME, paired_test, score_model
from trademl.retrain.decisions import DecisionLog
from trademl.retrain.spans import plan_spans, purge_gap


@dataclass
class Decision:
    """What a round decided for one kind, as the decision log records it (``record``)."""

    kind: str
    promoted: bool
    reason: str
    record: dict = field(default_factory=dict)


def training_config(config: Config) -> Config:
    """The challengers' settings: the config's, with the weighted vote instead of the stacker.
    A stacker is fitted on given base versions; a challenger of one kind must be judged, and
    served, on its own (the loader serves the vote when the stacker's versions are not served)."""
    cfg = config.model_copy(deep=True)
    cfg.ensemble.method = "vote"
    return cfg


def retrain_round(dataset, config=None, model_root=None, *, kinds=None, say: Callable[[str], None] | None = None
                  ) -> list[Decision]:
    """Train challengers of ``kinds`` (families; default [retrain] kinds) on the latest window of
    ``dataset``, judge each against the store's champion of its kind on the held-out span,
    promote (adopt into the store) only those better beyond noise, log every decision."""
    cfg = resolve_config(config)
    root = Path(model_root or cfg.paths.model_root)
    families = check_families(kinds or cfg.retrain.kinds)
    log = DecisionLog(root)
    log.read()  # a corrupt history fails the round before any training
    spans = plan_spans(dataset.frame.index, cfg.retrain.window, cfg.retrain.holdout, purge_gap(dataset.horizons, cfg))
    say = say or (lambda _msg: None)
    described = spans.describe(dataset.frame.index)
    say(f"training {', '.join(families)} on {described['train']['rows']:,} bars {described['train']['start']} .. "
        f"{described['train']['end']}; judging on {described['holdout']['rows']:,} bars from {described['holdout']['start']}")
    store = ModelStore(root)
    with tempfile.TemporaryDirectory(prefix="trademl-retrain-") as tmp:
        trained = train_models(sub_dataset(dataset, spans.train), training_config(cfg), Path(tmp) / "models",
                               models=families, work_dir=Path(tmp) / "checkpoints", skip_failed=True)
        decisions = [_judge(kind, challenger, store, dataset, spans, cfg, described)
                     for kind, challenger in trained.stored.items()]
        decisions += [_not_trained(kind, why, store, described, cfg) for kind, why in trained.skipped.items()]
        for decision in decisions:  # promoted first into the store, then logged: the log never claims more
            if decision.promoted:
                store.adopt(trained.stored[decision.kind])
            decision.record["served_version"] = _served(store, decision.kind)
            log.append(decision.record)
    return decisions


def _judge(kind: str, challenger, store: ModelStore, dataset, spans, cfg: Config, described: dict) -> Decision:
    """Score the challenger and the champion on the held-out span and decide (see challenge)."""
    alpha = cfg.retrain.alpha
    champion, unloadable = serving_champion(store, kind)
    mine = score_model(challenger, dataset, spans.holdout, cfg)
    record = _base_record(kind, described, alpha, challenger.version, champion.version if champion else None)
    if unloadable:
        record["champion_skipped"] = unloadable
    record["figures"] = {"challenger": mine.figures}
    if champion is None:
        reason = f"no champion: the store has no {kind} model, so the first challenger is served"
        return Decision(kind, True, reason, {**record, "outcome": "promoted", "reason": reason})
    theirs = score_model(champion, dataset, spans.holdout, cfg)
    record["figures"]["champion"] = theirs.figures
    test = paired_test(mine, theirs)
    record["test"] = test.to_record()
    promoted = test.p_value < alpha
    difference = ("no sessions" if math.isnan(test.mean_difference) else
                  f"{test.mean_difference:+,.0f} $/session over {test.sessions} sessions")
    if test.sessions < MIN_SESSIONS:
        difference += f"; a test needs {MIN_SESSIONS} sessions: lengthen [retrain] holdout"
    if not mine.figures.get("trades") and not theirs.figures.get("trades"):
        difference += "; neither traded: no decision cleared the confidence threshold in force"
    reason = (f"better beyond noise: p = {test.p_value:.4g} < alpha {alpha:g} ({difference})" if promoted else
              f"not better beyond noise: p = {test.p_value:.4g} >= alpha {alpha:g} ({difference})")
    return Decision(kind, promoted, reason, {**record, "outcome": "promoted" if promoted else "kept", "reason": reason})


def serving_champion(store: ModelStore, kind: str):
    """(the version of ``kind`` the loader serves, or None; why newer ones were passed over): the
    newest version that passes the store's checks, as ``trademl.predict.loader`` picks it, so a
    corrupt newest version is not the champion a challenger is judged against."""
    passed_over = []
    for version in reversed(store.versions(kind)):
        try:
            return store.load(kind, version), passed_over
        except ModelStoreError as e:
            passed_over.append(f"{version}: {e.message}")
    return None, passed_over


def _not_trained(kind: str, why: str, store: ModelStore, described: dict, cfg: Config) -> Decision:
    reason = f"no challenger: it could not be trained on the window ({why})"
    record = _base_record(kind, described, cfg.retrain.alpha, None, _served(store, kind))
    return Decision(kind, False, reason, {**record, "outcome": "kept", "reason": reason})


def _base_record(kind: str, described: dict, alpha: float, challenger: str | None, champion: str | None) -> dict:
    return {"time": datetime.now(timezone.utc).isoformat(), "kind": kind, "challenger_version": challenger,
            "champion_version": champion, "spans": described, "alpha": alpha, "test": {"name": TEST_NAME}}


def _served(store: ModelStore, kind: str) -> str | None:
    served, _ = serving_champion(store, kind)
    return served.version if served is not None else None


# ----------------------------------------------------------------------------- the schedule


def seconds_until_next(started: float, every_s: float, now: float) -> float:
    """Seconds from ``now`` to the next round slot, slots at ``started + k * every_s``: a round
    that ran past one or more slots starts at the next one, not at once for each it missed."""
    if every_s <= 0:
        raise ValueError("the interval must be positive")
    if now < started:
        return started - now
    slots_done = math.floor((now - started) / every_s) + 1
    return started + slots_done * every_s - now


def run_every(round_fn: Callable[[], object], every_s: float, *, rounds: int | None = None,
              clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep,
              on_error: Callable[[TradeMLError], None] | None = None) -> int:
    """Run ``round_fn`` every ``every_s`` seconds (``rounds`` times; None: forever). A round's
    TradeMLError goes to ``on_error`` and the schedule goes on (the next bars may fix it); without
    ``on_error`` it is raised. Returns the rounds run."""
    started, done = clock(), 0
    while rounds is None or done < rounds:
        try:
            round_fn()
        except TradeMLError as e:
            if on_error is None:
                raise
            on_error(e)
        done += 1
        if rounds is not None and done >= rounds:
            break
        sleep(seconds_until_next(started, every_s, clock()))
    return done


def retrain(load_dataset: Callable[[], object], config=None, model_root=None, *, kinds=None, once: bool = True,
            console=None) -> list[Decision]:
    """What `trademl retrain` runs: a round on ``load_dataset()`` (called again each round), then,
    unless ``once``, a round every [retrain] every, forever. Returns the last round's decisions."""
    cfg = resolve_config(config)
    every_s = parse_duration(cfg.retrain.every, "--every")
    say = (lambda msg: console.print(msg)) if console is not None else None
    last: list[Decision] = []

    def one_round() -> None:
        nonlocal last
        last = retrain_round(load_dataset(), cfg, model_root, kinds=kinds, say=say)
        if console is not None:
            console.print(decisions_table(last))
            for d in last:  # one plain line each: what a log file or a narrow terminal keeps whole
                console.print(f"{d.kind}: {d.record['outcome']}, serving {d.record.get('served_version')}: {d.reason}",
                              markup=False, highlight=False, soft_wrap=True)

    def report(e: TradeMLError) -> None:
        if console is not None:
            console.print(f"[red]round failed: {e}[/] (next round in {cfg.retrain.every})")

    run_every(one_round, every_s, rounds=1 if once else None, on_error=None if once else report)
    return last


def decisions_table(decisions: list[Decision]):
    """A rich table of one round: kind, outcome, versions, both Sharpes and P&Ls, the p-value (the
    reasons follow it, one line each)."""
    from rich.table import Table

    t = Table(title="retrain decisions")
    for col in ("kind", "outcome", "champion", "challenger", "Sharpe champ/chall", "P&L champ/chall", "p"):
        t.add_column(col, overflow="fold")
    for d in decisions:
        r = d.record
        figures = r.get("figures", {})
        champ, chall = figures.get("champion", {}), figures.get("challenger", {})
        t.add_row(d.kind, r["outcome"], _short(r.get("champion_version")), _short(r.get("challenger_version")),
                  f"{_num(champ.get('sharpe'))} / {_num(chall.get('sharpe'))}",
                  f"{_num(champ.get('total_pnl'), '${:,.0f}')} / {_num(chall.get('total_pnl'), '${:,.0f}')}",
                  _num(r.get("test", {}).get("p_value"), "{:.4f}"))
    return t


def _short(version: str | None) -> str:
    return "-" if version is None else version[:15]


def _num(value, fmt: str = "{:.2f}") -> str:
    return "-" if value is None else fmt.format(value)
