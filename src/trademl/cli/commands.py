"""The `trademl` commands, a Typer app. Each sub-command is a thin call into a library function.

Imports of heavy modules (torch, lightgbm, pandas) happen inside the commands, so that
`trademl --help` is instant. `trademl predict` itself is answered by ``trademl.cli.main``
without this module (Typer's import and parsing would add ~0.08 s to its cold start); the command
here is its --help and the reader of the command lines the fast parser leaves to Typer.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Optional

import typer

from trademl.cli import CONFIG_HELP, MODEL_ROOT_HELP, NO_LOG_HELP, PREDICT_HELP, warnings_to_logging

app = typer.Typer(help="ML trading signals for futures minute bars.", no_args_is_help=True, add_completion=False)
data_app = typer.Typer(help="Load bars and build datasets.", no_args_is_help=True)
train_app = typer.Typer(help="Train models into the model store.", no_args_is_help=True)
models_app = typer.Typer(help="Inspect the model store.", no_args_is_help=True)
config_app = typer.Typer(help="Inspect the settings.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(train_app, name="train")
app.add_typer(models_app, name="models")
app.add_typer(config_app, name="config")

# Options that several commands share, declared once.
ConfigOpt = typer.Option(None, "--config", "-c", help=CONFIG_HELP)
BarsArg = typer.Argument(None, help="Bars files (CSV/TXT/Parquet) or a quoted glob, merged in time order. "
                         "Default: the bundled ES sample.")
BarsFilesArg = typer.Argument(None, help="Dataset folder, or bars files / a quoted glob merged in time order "
                              "(default: the bundled ES sample).")
TrainingDataArg = typer.Argument(None, help="Dataset folder or bars file (default: the bundled ES sample).")
TzOpt = typer.Option(None, "--tz", help="Zone of naive timestamps, e.g. America/New_York (default: [data] timezone, "
                     "else UTC with a warning).")
SymbolOpt = typer.Option(None, "--symbol", help="Instrument, e.g. NQZ5, NQ1!, SPY (default: the data's contract "
                         "column or file name; an error when neither names one).")
TickSizeOpt = typer.Option(None, "--tick-size", help="Tick size of the --symbol instrument (with --point-value for "
                           "one not listed; same as [contracts.SYMBOL] tick_size).")
PointValueOpt = typer.Option(None, "--point-value", help="Dollars per full point per contract of the --symbol "
                             "instrument ([contracts.SYMBOL] point_value).")
CommissionOpt = typer.Option(None, "--commission", help="Commission per contract (share) per side of the --symbol "
                             "instrument ([contracts.SYMBOL] commission_per_side; default: [costs]).")
ContextOpt = typer.Option(None, "--context", help="Another instrument's bars (e.g. ES.csv beside NQ; repeat or quote "
                         "a glob for several files): adds its aligned returns, relative strength, correlation and "
                         "beta as features (as-of join: no later context bar is read).")
WorkersOpt = typer.Option(1, "--workers", min=1, max=256, help="Independent jobs at once (folds, trials): 1 runs in "
                          "this process; more start a local Ray (pip install trademl[ray]) or join --ray-address.")
RayAddressOpt = typer.Option(None, "--ray-address", envvar="RAY_ADDRESS", help="A running Ray cluster to run the jobs "
                             "on (with --workers > 1), e.g. 127.0.0.1:6379 after `ray start --head`.")
ModelRootOpt = typer.Option(None, "--model-root", help=MODEL_ROOT_HELP)


def friendly_errors(fn):
    """Turn the errors a user can act on into one clear line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from trademl.errors import TradeMLError

        try:
            with warnings_to_logging(_secho_warning):
                return fn(*args, **kwargs)
        except TradeMLError as e:
            typer.secho(f"error: {e}", fg="red", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.secho("interrupted: nothing half-written was kept", fg="yellow", err=True)
            raise typer.Exit(130) from None

    return wrapper


def _secho_warning(text: str) -> None:
    """Through typer: to the stderr of the moment (a CliRunner swaps it per invocation), yellow on a terminal."""
    typer.secho(text, fg="yellow", err=True)


def load_cli_config(config, *, tz=None, symbol=None, tick_size=None, point_value=None, commission=None, overrides=None):
    """The config with the command line's --tz and --tick-size/--point-value applied, so every library
    call below reads them where it reads [data] timezone and [contracts] (one home each)."""
    from trademl.config import load_config
    from trademl.data.bars import check_tz
    from trademl.errors import TradeMLError
    from trademl.market.contracts import CONTRACTS, root_of

    check_tz(tz)  # an unknown zone fails before any file is read
    extra = dict(overrides or {})
    if tz is not None:
        extra["data"] = {**extra.get("data", {}), "timezone": tz}
    described = (("tick_size", tick_size), ("point_value", point_value), ("commission_per_side", commission))
    given = {k: v for k, v in described if v is not None}
    if given:
        if not symbol:
            raise TradeMLError("--tick-size, --point-value and --commission describe the instrument named by --symbol",
                               where="--tick-size/--point-value", hint="add --symbol, e.g. --symbol SPY")
        extra["contracts"] = {root_of(symbol, CONTRACTS): given}
    return load_config(config, extra or None)


def _one_or_many(paths):
    """A list argument as the library takes it: None, one path, or the list."""
    if not paths:
        return None
    return paths[0] if len(paths) == 1 else list(paths)


def console(stderr: bool = True):
    """Progress and messages go to stderr; a command whose answer is a table (inspect) prints it
    to stdout, where a pipe or a redirect finds it."""
    from rich.console import Console

    return Console(stderr=stderr)


@data_app.command("build")
@friendly_errors
def data_build(
    bars: Optional[list[Path]] = BarsArg,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Dataset folder (default: artifacts/data/<name>)."),
    decisions: Optional[Path] = typer.Option(None, "--decisions", help="Decision log (CSV or JSONL) of the bot."),
    symbol: Optional[str] = SymbolOpt,
    tick_size: Optional[float] = TickSizeOpt,
    point_value: Optional[float] = PointValueOpt,
    commission: Optional[float] = CommissionOpt,
    tz: Optional[str] = TzOpt,
    repair: bool = typer.Option(False, "--repair", help="Drop/dedupe bad rows and report them instead of failing."),
    resample: Optional[int] = typer.Option(None, "--resample", help="Resample to N-minute bars first (1 to 10080, a week)."),
    context: Optional[list[Path]] = ContextOpt,
    config: Optional[Path] = ConfigOpt,
):
    """Bars (+ optional decision log) -> Parquet dataset + manifest."""
    from trademl.data.bars import check_resample_minutes
    from trademl.data.dataset import build_dataset, print_summary

    if resample is not None:
        check_resample_minutes(resample)
    cfg = load_cli_config(config, tz=tz, symbol=symbol, tick_size=tick_size, point_value=point_value,
                          commission=commission)
    result = build_dataset(
        bars_path=_one_or_many(bars), out_dir=out, decisions_path=decisions, symbol=symbol,
        repair=repair, resample_minutes=resample, config=cfg, progress=True, context=_one_or_many(context),
    )
    print_summary(result, console())


@data_app.command("inspect")
@friendly_errors
def data_inspect(
    bars: Optional[list[Path]] = BarsArg,
    repair: bool = typer.Option(False, "--repair", help="Drop/dedupe bad rows and list them instead of failing."),
    tz: Optional[str] = typer.Option(None, "--tz", help="Timezone of naive stamps (default UTC)."),
    resample: Optional[int] = typer.Option(None, "--resample", help="Describe the N-minute bars instead (1 to 10080, a week)."),
    symbol: Optional[str] = typer.Option(None, "--symbol", help="Symbol to record (default: from the file)."),
):
    """Load and validate a bars file; show what it holds (span, segments, rolls) and what repair dropped."""
    from rich.table import Table

    from trademl.data.bars import (bundled_sample_path, check_resample_minutes, check_tz, describe_bars, load_bars,
                                   resample_bars, summary_rows)

    check_tz(tz)
    if resample is not None:
        check_resample_minutes(resample)
    frame = load_bars(_one_or_many(bars) or bundled_sample_path(), symbol=symbol, repair=repair, tz=tz)
    report = frame.attrs.get("repair_report")
    if resample is not None:
        frame = resample_bars(frame, resample)
    table = Table(title="bars", show_header=False)
    for label, text in summary_rows(describe_bars(frame)):
        table.add_row(label, text)
    out = console(stderr=False)
    out.print(table)
    if report is not None:
        out.print(str(report), markup=False, highlight=False, soft_wrap=True)
    if frame.attrs.get("merge_report"):
        out.print(str(frame.attrs["merge_report"]), markup=False, highlight=False, soft_wrap=True)


@data_app.command("features")
@friendly_errors
def data_features(
    all_: bool = typer.Option(False, "--all", help="Every registered feature, not only the default set."),
):
    """List the features: name, warm-up bars, whether volume is needed, what each one is."""
    from rich.table import Table

    from trademl.data.features import DEFAULT_FEATURES, FeatureSchema, describe_features

    rows = describe_features(None if all_ else DEFAULT_FEATURES)
    schema = FeatureSchema.for_names(DEFAULT_FEATURES)
    table = Table(title=f"{len(rows)} features (default schema {schema.hash[:12]})")
    for col in ("name", "default", "warm-up", "volume", "what"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], "yes" if r["default"] else "", str(r["warmup"]),
                      "yes" if r["needs_volume"] else "", r["description"])
    console().print(table)


def _train_lgbm(dataset_path, cfg, source: str = "auto", symbol: str | None = None, context=None) -> None:
    """Train lgb_5m and lgb_30m into the store with a progress bar, then print their tables."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from trademl.data.dataset import load_training_dataset
    from trademl.models.lgbm import print_reports, train_lgbm
    from trademl.models.store import ModelStore

    out = console()
    dataset = load_training_dataset(dataset_path, cfg, symbol=symbol, context=context)
    store = ModelStore(cfg.paths.model_root)
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=out, transient=True) as bar:
        task = bar.add_task("lgbm", total=None)

        def step(what: str, done: int, total: int) -> None:
            bar.update(task, description=what, completed=done, total=total)

        reports = train_lgbm(dataset, cfg, store=store, progress=step, source=source)
    print_reports(reports, out)


@train_app.command("lgbm")
@friendly_errors
def train_lgbm_command(
    dataset: Optional[list[Path]] = BarsFilesArg,
    rows: str = typer.Option("auto", "--rows", help="Training rows: auto (decision log if any), bars or decisions."),
    symbol: Optional[str] = SymbolOpt,
    tick_size: Optional[float] = TickSizeOpt,
    point_value: Optional[float] = PointValueOpt,
    commission: Optional[float] = CommissionOpt,
    tz: Optional[str] = TzOpt,
    context: Optional[list[Path]] = ContextOpt,
    config: Optional[Path] = ConfigOpt,
):
    """LightGBM win models lgb_5m and lgb_30m: walk-forward, calibrated, ONNX, stored."""
    cfg = load_cli_config(config, tz=tz, symbol=symbol, tick_size=tick_size, point_value=point_value,
                          commission=commission)
    _train_lgbm(_one_or_many(dataset), cfg, rows, symbol, _one_or_many(context))


@train_app.command("all")
@friendly_errors
def train_all_command(
    dataset: Optional[list[Path]] = BarsFilesArg,
    symbol: Optional[str] = SymbolOpt,
    tick_size: Optional[float] = TickSizeOpt,
    point_value: Optional[float] = PointValueOpt,
    commission: Optional[float] = CommissionOpt,
    tz: Optional[str] = TzOpt,
    context: Optional[list[Path]] = ContextOpt,
    each: bool = typer.Option(False, "--each", help="Each bars file is its own instrument: one store per symbol, "
                              "<model_root>/<SYMBOL>, the files trained --workers at a time."),
    workers: int = WorkersOpt,
    ray_address: Optional[str] = RayAddressOpt,
    config: Optional[Path] = ConfigOpt,
):
    """LightGBM (lgb_5m, lgb_30m), the LSTM and the PPO agent on one dataset, into the model store."""
    from trademl.data.dataset import load_training_dataset
    from trademl.models.train_all import print_trained, train_each, train_models

    cfg = load_cli_config(config, tz=tz, symbol=symbol, tick_size=tick_size, point_value=point_value,
                          commission=commission)
    out = console()
    if each:
        from trademl.errors import TradeMLError

        if not dataset:
            raise TradeMLError("--each needs the bars files, one per instrument", where="--each")
        if symbol or context:
            raise TradeMLError("--each reads each file's instrument from its contract column or name; --symbol "
                               "and --context are for one instrument", where="--each")
        done = train_each(list(dataset), cfg, cfg.paths.model_root, workers=workers, address=ray_address)
        for sym, r in done.items():
            skipped = "".join(f"; {k} skipped: {why}" for k, why in r.skipped.items())
            out.print(f"{sym} ({r.source}): {', '.join(r.kinds)} into {Path(cfg.paths.model_root) / sym}{skipped}")
        return
    data = load_training_dataset(_one_or_many(dataset), cfg, symbol=symbol, context=_one_or_many(context))
    trained = train_models(data, cfg, cfg.paths.model_root, progress=True, console=out)
    print_trained(trained, out)


@models_app.command("list")
@friendly_errors
def models_list(config: Optional[Path] = ConfigOpt):
    """Every stored model: kind, version, when, what it was trained on, its headline figures."""
    from rich.table import Table

    from trademl.config import load_config
    from trademl.models.store import ModelStore

    cfg = load_config(config)
    manifests = ModelStore(cfg.paths.model_root).list()
    out = console()
    if not manifests:
        out.print(f"no models in {cfg.paths.model_root} (run `trademl train all`)")
        return
    t = Table(title=f"models in {cfg.paths.model_root}")
    for col in ("kind", "version", "created", "trained on", "schema", "out-of-sample"):
        t.add_column(col)
    for m in manifests:
        span = m.get("training_span", {})
        trained = f"{str(span.get('start', '?'))[:10]}..{str(span.get('end', '?'))[:10]}, {span.get('rows', '?')} rows"
        schema = m.get("feature_schema", {})
        t.add_row(m["kind"], m["version"], m["created_at"][:19], trained,
                  f"{len(schema.get('names', []))} feat {str(schema.get('hash', ''))[:8]}", _headline(m.get("metrics", {})))
    out.print(t)


def _headline(metrics: dict) -> str:
    """One line of the model's out-of-sample figures: the ``headline`` and ``validation_skill``
    every kind stores in one shape (``trademl.models.base``)."""
    parts = []
    for name, value in (metrics.get("headline") or {}).items():
        if isinstance(value, str):
            parts.append(value)
        elif isinstance(value, float):
            parts.append(f"{name} {value:.3f}")
        elif isinstance(value, int):
            parts.append(f"{name} {value:,}")
    return ", ".join(parts) or "-"


@train_app.command("lstm")
@friendly_errors
def train_lstm_command(
    dataset: Optional[Path] = typer.Argument(None, help="Dataset folder (default: <data_dir>/es_1min_lean, what `trademl data build` writes)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from its last per-epoch checkpoint."),
    checkpoint_dir: Optional[Path] = typer.Option(None, "--checkpoint-dir", help="Per-epoch checkpoints (default: artifacts/checkpoints/lstm)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Override EPOCHS of the lstm config section."),
    arch: Optional[str] = typer.Option(None, "--arch", help="Override [lstm] architecture: bilstm_attention, gru, transformer, cnn_lstm, tcn."),
    config: Optional[Path] = ConfigOpt,
):
    """Sequence model (signal, movement, risk; the guide's BiLSTM or --arch): walk-forward CV, then store model.onnx."""
    from trademl.config import load_config
    from trademl.data.dataset import load_dataset
    from trademl.models.lstm import stored_summary, train_lstm

    overrides = {k: v for k, v in (("EPOCHS", epochs), ("architecture", arch)) if v}
    cfg = load_config(config, {"lstm": overrides} if overrides else None)  # an unknown --arch is a config error
    ds = load_dataset(dataset or Path(cfg.paths.data_dir) / "es_1min_lean")
    result = train_lstm(ds, cfg, checkpoint_dir=checkpoint_dir, resume=resume, progress=True)
    console().print(stored_summary(result.stored))


@train_app.command("ppo")
@friendly_errors
def train_ppo_command(
    bars: Optional[list[Path]] = BarsFilesArg,
    symbol: Optional[str] = SymbolOpt,
    tick_size: Optional[float] = TickSizeOpt,
    point_value: Optional[float] = PointValueOpt,
    commission: Optional[float] = CommissionOpt,
    tz: Optional[str] = TzOpt,
    timesteps: Optional[int] = typer.Option(None, "--timesteps", help="Override total_timesteps of the ppo config section."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint (ppo.checkpoint_dir)."),
    synthetic: Optional[int] = typer.Option(None, "--synthetic", help="Train on N synthetic bars with a planted edge instead."),
    edge_ic: float = typer.Option(0.15, "--edge-ic", help="Strength of the planted edge of --synthetic (0: random walk)."),
    account: Optional[str] = typer.Option(None, "--account", help=(
        "Train under an account's rules (topstep-50k, topstep-100k, topstep-150k): cap, 15:10 CT flatten, a breach "
        "ends the episode, the agent observes its room to each limit ([ppo] account_rules).")),
    algo: Optional[str] = typer.Option(None, "--algo", help=(
        "ppo (default), a2c (synchronous A3C, same hold/buy/sell policy) or sac (a continuous target position, "
        "rounded to contracts) ([ppo] algo).")),
    config: Optional[Path] = ConfigOpt,
):
    """PPO agent (stable-baselines3) in the vectorised trading env: held-out evaluation, policy.onnx stored."""
    from trademl.models.ppo.train import print_summary, train_ppo_from_source
    from trademl.risk.rules import rules_for

    overrides = {"total_timesteps": timesteps} if timesteps else {}
    if algo is not None:
        overrides["algo"] = algo  # an unknown one is a config error, before any work
    if account is not None:
        overrides["account_rules"] = rules_for(account).name  # an unknown preset fails here, before any work
    cfg = load_cli_config(config, tz=tz, symbol=symbol, tick_size=tick_size, point_value=point_value,
                          commission=commission, overrides={"ppo": overrides} if overrides else None)
    result = train_ppo_from_source(_one_or_many(bars), cfg, symbol=symbol, synthetic=synthetic, edge_ic=edge_ic,
                                   resume=resume, progress=True, console=console())
    print_summary(result, console())


@app.command("predict", help=PREDICT_HELP)
@friendly_errors
def predict_command(
    model_root: Optional[Path] = ModelRootOpt,
    no_log: bool = typer.Option(False, "--no-log", help=NO_LOG_HELP),
    config: Optional[Path] = ConfigOpt,
):
    """The help is PREDICT_HELP; trademl.cli.main answers the usual command lines without Typer."""
    from trademl.predict.stdio import predict_stdio

    code = predict_stdio(sys.stdin, sys.stdout, model_root=model_root, config=config, record=not no_log)
    raise typer.Exit(code)


@app.command("serve")
@friendly_errors
def serve_command(
    host: Optional[str] = typer.Option(None, "--host", help="Bind address (default: [serve] host)."),
    port: Optional[int] = typer.Option(None, "--port", min=1, max=65535, help="Port, 1..65535 (default: [serve] port)."),
    model_root: Optional[Path] = ModelRootOpt,
    log_dir: Optional[Path] = typer.Option(None, "--log-dir", help="Prediction logs (default: paths.log_dir of the config)."),
    stream_bars: Optional[list[str]] = typer.Option(
        None, "--stream-bars", help="SYMBOL=FILE: start that symbol's bar stream (POST /v1/bars) from the file's last "
                                    "bars, e.g. after a restart. Repeat it for several symbols."),
    config: Optional[Path] = ConfigOpt,
):
    """The HTTP service: POST /v1/predict, /v1/predict/batch, /v1/bars; GET /healthz, /v1/models, /metrics.

    Beyond loopback it needs a bearer token of at least 16 characters in [serve] token_env."""
    from trademl.serve.app import serve

    serve(config, model_root, host, port, log_dir, [_symbol_and_file(item) for item in stream_bars or ()])


def _symbol_and_file(item: str) -> tuple[str, Path]:
    """--stream-bars SYMBOL=FILE, else a clear error."""
    from trademl.errors import TradeMLError

    symbol, sep, path = item.partition("=")
    if not sep or not symbol.strip() or not path.strip():
        raise TradeMLError(f"--stream-bars {item!r} is not SYMBOL=FILE", where="--stream-bars",
                           hint="e.g. --stream-bars ESZ5=bars/es_1min.csv")
    return symbol.strip(), Path(path.strip())


@app.command("monitor")
@friendly_errors
def monitor_command(
    bars: Optional[list[Path]] = typer.Option(None, "--bars", help="Bars that arrived since (CSV/TXT/Parquet): judges "
                                              "outcomes. Repeat it, or give a quoted glob, for several files."),
    tz: Optional[str] = TzOpt,
    log: Optional[Path] = typer.Option(None, "--log", help="Prediction log (default: <[paths] log_dir>/predictions.sqlite)."),
    since: Optional[str] = typer.Option(None, "--since", help="Only predictions from then on: ISO time (UTC) or 24h / 7d ago."),
    symbol: Optional[str] = typer.Option(None, "--symbol", help="Only predictions for this symbol, e.g. NQZ5."),
    model_root: Optional[Path] = ModelRootOpt,
    reference_bars: Optional[Path] = typer.Option(
        None, "--reference-bars", help="Training-period bars, for models whose manifest has no feature_reference."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="HTML report (default: <[paths] report_dir>/monitor.html)."),
    export: Optional[Path] = typer.Option(None, "--export", help="Also write the selected log rows to this Parquet file."),
    prune_before: Optional[str] = typer.Option(
        None, "--prune-before", help="Delete log rows older than this (ISO time or 90d), after the report and even when it fails."),
    config: Optional[Path] = ConfigOpt,
):
    """Prediction log + bars since -> hit rate, P&L, calibration, drift, latency, errors (exit 3 on an alert)."""
    from trademl.predict.log import PredictionLog
    from trademl.monitor.report import parse_since, print_summary, run_monitor

    cfg = load_cli_config(config, tz=tz)
    html_path = out or Path(cfg.paths.report_dir) / "monitor.html"
    cutoff = parse_since(prune_before)  # a bad value fails before anything is written
    try:
        result = run_monitor(log, _one_or_many(bars), since=parse_since(since), symbol=symbol, config=cfg, model_root=model_root,
                             reference_bars=reference_bars, html_path=html_path)
        print_summary(result, console())
        if export is not None:
            exported = PredictionLog(result.log_path).export_parquet(export, since=parse_since(since), symbol=symbol)
            console().print(f"exported: {exported}")
    finally:  # the housekeeping asked for happens even when the report cannot be made
        if cutoff is not None:
            log_path = Path(log) if log is not None else Path(cfg.paths.log_dir) / "predictions.sqlite"
            if log_path.exists():
                console().print(f"pruned {PredictionLog(log_path).prune(cutoff):,} rows older than {cutoff}")
    for line in result.alerts:
        typer.echo(f"ALERT {line}", err=True)
    raise typer.Exit(result.exit_code)


def _threshold_option(text: str):
    """--threshold: "auto" or a number in [0, 1), else a clear error."""
    import math

    from trademl.errors import TradeMLError

    if text.strip().lower() == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (0.0 <= value < 1.0):
        raise TradeMLError(f"--threshold must be a probability in [0, 1) or auto, not {text!r}", where="--threshold")
    return value


@app.command("backtest")
@friendly_errors
def backtest_command(
    dataset: Optional[list[Path]] = BarsFilesArg,
    folds: Optional[int] = typer.Option(None, "--folds", help="Walk-forward folds (default: n_folds of the backtest config section)."),
    budget: str = typer.Option("full", "--budget", help="Training per fold: small (the demo config section) or full (the config as is)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="HTML report (default: <report_dir>/backtest.html)."),
    models: str = typer.Option("lgbm,lstm,ppo", "--models", help="Model groups to train and combine, comma-separated."),
    account: Optional[str] = typer.Option(None, "--account", help="Trade every run through these account rules "
                                          "(topstep-50k, topstep-100k, topstep-150k): passed/failed, P(pass)."),
    stops: bool = typer.Option(False, "--stops", help="Give every trade of every run an ATR stop and target ([risk] "
                               "stop_atr, target_atr), checked inside each bar; the stop first when both are hit."),
    synthetic: Optional[int] = typer.Option(None, "--synthetic", help="Walk forward over N generated NQ bars with a "
                                            "planted edge (a feature named edge) instead of a dataset."),
    edge_ic: float = typer.Option(0.15, "--edge-ic", help="Strength of the planted edge of --synthetic (0: random walk)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the --synthetic bars."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the results as JSON here: bars, DSR "
                                             "trials, PBO, each run's figures, the ensemble's calibration."),
    threshold: Optional[str] = typer.Option(None, "--threshold", help="The win probability a BUY/SELL must clear: a "
                                            "number, or auto (the stacker's choice per fold; every threshold of "
                                            "the grid counts in the deflated Sharpe). Default: [backtest] "
                                            "confidence_threshold."),
    symbol: Optional[str] = SymbolOpt,
    tick_size: Optional[float] = TickSizeOpt,
    point_value: Optional[float] = PointValueOpt,
    commission: Optional[float] = CommissionOpt,
    tz: Optional[str] = TzOpt,
    context: Optional[list[Path]] = ContextOpt,
    workers: int = WorkersOpt,
    ray_address: Optional[str] = RayAddressOpt,
    config: Optional[Path] = ConfigOpt,
):
    """Walk-forward: per fold, train on the past, predict the fold with the serving runtimes, trade it; HTML report."""
    from trademl.backtest.walkforward import backtest_models

    chosen = tuple(m.strip() for m in models.split(",") if m.strip())
    cfg = load_cli_config(config, tz=tz, symbol=symbol, tick_size=tick_size, point_value=point_value,
                          commission=commission)
    if threshold is not None:
        cfg.backtest.confidence_threshold = _threshold_option(threshold)
    backtest_models(_one_or_many(dataset), cfg, n_folds=folds, budget=budget, out=out, models=chosen, console=console(),
                    account=account, stops=stops, synthetic=synthetic, edge_ic=edge_ic, seed=seed, json_path=json_path,
                    symbol=symbol, context=_one_or_many(context), workers=workers, ray_address=ray_address)


@app.command("retrain")
@friendly_errors
def retrain_command(
    bars: Optional[list[Path]] = BarsFilesArg,
    window: Optional[str] = typer.Option(None, "--window", help="Bar time the challengers train on, e.g. 60d, 12h "
                                         "(default: [retrain] window)."),
    holdout: Optional[str] = typer.Option(None, "--holdout", help="Newest bar time champion and challenger are "
                                          "judged on, after a purge gap (default: [retrain] holdout)."),
    every: Optional[str] = typer.Option(None, "--every", help="Wall-clock time between rounds, e.g. 1d (default: "
                                        "[retrain] every); the bars are read again each round."),
    once: bool = typer.Option(False, "--once", help="One round, then exit (default: a round every --every, forever)."),
    kinds: Optional[str] = typer.Option(None, "--kinds", help="Families to retrain, comma-separated: lgbm, lstm, ppo "
                                        "(default: [retrain] kinds)."),
    alpha: Optional[float] = typer.Option(None, "--alpha", help="False-positive rate of a promotion (default: "
                                          "[retrain] alpha)."),
    model_root: Optional[Path] = ModelRootOpt,
    synthetic: Optional[int] = typer.Option(None, "--synthetic", help="Retrain on N generated NQ bars with a planted "
                                            "edge (a feature named edge) instead of bars files."),
    edge_ic: float = typer.Option(0.15, "--edge-ic", help="Strength of the planted edge of --synthetic (0: random walk)."),
    flip_at: Optional[float] = typer.Option(None, "--flip-at", help="--synthetic: the planted edge changes sign from "
                                            "this share of the bars on (0.5: midway), a regime change."),
    seed: int = typer.Option(0, "--seed", help="Seed of the --synthetic bars."),
    symbol: Optional[str] = SymbolOpt,
    tz: Optional[str] = TzOpt,
    config: Optional[Path] = ConfigOpt,
):
    """Train challengers on the latest window, promote each over the served champion only when better
    beyond noise on a purged span after the window; every decision into <model_root>/retrain/decisions.jsonl."""
    from trademl.config import parse_duration
    from trademl.retrain.loop import retrain

    given = {"window": window, "holdout": holdout, "every": every, "alpha": alpha,
             "kinds": [k.strip() for k in kinds.split(",") if k.strip()] if kinds is not None else None}
    for name in ("window", "holdout", "every"):
        if given[name] is not None:
            parse_duration(given[name], f"--{name}")  # a bad value names its option, before any work
    cfg = load_cli_config(config, tz=tz, symbol=symbol,
                          overrides={"retrain": {k: v for k, v in given.items() if v is not None}})
    root = model_root or Path(cfg.paths.model_root)
    load, cfg = _retrain_source(_one_or_many(bars), cfg, synthetic, edge_ic, flip_at, seed, symbol)
    retrain(load, cfg, root, once=once, console=console())


def _retrain_source(bars, cfg, synthetic, edge_ic, flip_at, seed, symbol):
    """(a function giving the dataset of a round, the config it needs): the bars files read anew
    each round, or the generated bars (with the flip of --flip-at)."""
    from trademl.errors import TradeMLError

    if synthetic is None:
        if flip_at is not None:
            raise TradeMLError("--flip-at changes generated bars: give it with --synthetic N", where="--flip-at")
        from trademl.data.dataset import load_training_dataset

        return (lambda: load_training_dataset(bars, cfg, symbol=symbol)), cfg
    if bars is not None:
        raise TradeMLError("give bars files or --synthetic N, not both", where="--synthetic")
    from trademl.backtest.walkforward import synthetic_dataset

    dataset, cfg = synthetic_dataset(synthetic, edge_ic, seed, cfg, flip_at)
    return (lambda: dataset), cfg


@app.command("tune")
@friendly_errors
def tune_command(
    kind: str = typer.Argument(..., help="What to tune: lgbm, lstm or ppo."),
    dataset: Optional[list[Path]] = BarsFilesArg,
    trials: int = typer.Option(20, "--trials", help="Trials the study holds when done (a resumed study runs what is missing)."),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="Stop starting trials after this many seconds."),
    workers: int = WorkersOpt,
    ray_address: Optional[str] = RayAddressOpt,
    study: Optional[str] = typer.Option(None, "--study", help="Study name in [tune] storage (default: the kind)."),
    horizon: Optional[int] = typer.Option(None, "--horizon", help="lgbm: the label horizon in bars (default: the first of [data] horizons)."),
    json_path: Optional[Path] = typer.Option(None, "--json", help='Also write {"kind", "trials", "backend", "best": '
                                             '{"params", "value"}} here.'),
    symbol: Optional[str] = SymbolOpt,
    tz: Optional[str] = TzOpt,
    context: Optional[list[Path]] = ContextOpt,
    config: Optional[Path] = ConfigOpt,
):
    """Hyperparameter search with Optuna (TPE, median pruner per walk-forward fold, SQLite: a killed study
    resumes); writes the best settings as a config file whose [tune] trials the backtest's DSR counts."""
    import json

    from trademl.config import config_file_in_use
    from trademl.data.dataset import load_training_dataset
    from trademl.tune import tune

    cfg = load_cli_config(config, tz=tz, symbol=symbol)
    out = console()
    data = load_training_dataset(_one_or_many(dataset), cfg, symbol=symbol, context=_one_or_many(context))
    result = tune(kind, data, cfg, trials=trials, timeout=timeout, workers=workers, study_name=study, horizon=horizon,
                  config_file=config_file_in_use(config), ray_address=ray_address, say=out.print)
    best = "-" if result.best_value is None else f"{result.best_value:.6g}"
    out.print(f"{result.kind}: {result.trials} trials ({result.completed} complete, {result.pruned} pruned, "
              f"{result.failed} failed) on {result.backend}; best {result.metric} {best}: {result.best_params}")
    if result.config_path:
        out.print(f"best settings: {result.config_path} (pass it as --config: it extends yours and records the "
                  f"trials, which a walk-forward backtest counts in its deflated Sharpe)")
    if result.report_path:
        out.print(f"report: {result.report_path}")
    if json_path:
        from trademl.html_page import atomic_write_text

        atomic_write_text(Path(json_path), json.dumps(result.to_json(), indent=2))


@app.command("backtest-signals")
@friendly_errors
def backtest_signals_command(
    bars: Path = typer.Argument(..., help="Bars file (CSV/TXT/Parquet)."),
    signals: Path = typer.Argument(..., help="Signals: CSV/JSONL of timestamp,action[,confidence], or a decision log."),
    symbol: Optional[str] = typer.Option(None, "--symbol", help="Contract of the bars, e.g. NQZ5 (default: from the file)."),
    tick_size: Optional[float] = TickSizeOpt,
    point_value: Optional[float] = PointValueOpt,
    commission: Optional[float] = CommissionOpt,
    tz: Optional[str] = typer.Option(None, "--tz", help="Zone of naive timestamps of the bars and the signals, e.g. "
                                     "America/New_York (default: [data] timezone, else UTC with a warning)."),
    account: Optional[str] = typer.Option(None, "--account", help="Account rules: topstep-50k, topstep-100k, topstep-150k."),
    threshold: Optional[float] = typer.Option(None, "--threshold",
                                              help="Signals count above this confidence (default: [backtest] confidence_threshold)."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the results as JSON here."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="HTML report."),
    stops: bool = typer.Option(False, "--stops", help="Give every trade an ATR stop and target ([risk] stop_atr, "
                               "target_atr), checked inside each bar; the stop first when both are hit."),
    config: Optional[Path] = ConfigOpt,
):
    """A bot's own signals through the engine and the account's rules: passed or failed, and the probability of passing."""
    import json

    from trademl.backtest.report import write_report
    from trademl.backtest.signals import SIGNALS_NAME, backtest_signals, read_signals
    from trademl.backtest.walkforward import results_table
    from trademl.data.bars import load_bars

    cfg = load_cli_config(config, tz=tz, symbol=symbol, tick_size=tick_size, point_value=point_value,
                          commission=commission)
    frame = load_bars(bars, symbol=symbol, max_gap_minutes=cfg.data.max_gap_minutes, tz=cfg.data.timezone)
    if symbol:
        frame.attrs["symbol"] = symbol
    result = backtest_signals(frame, read_signals(signals, tz=cfg.data.timezone), config=cfg, account=account, threshold=threshold, stops=stops)
    out_console = console()
    out_console.print(results_table(result.table, title=f"{SIGNALS_NAME} on {bars.name}"))
    if result.account is not None:
        a = result.account
        verdict = "PASSED" if a["passed"] else f"FAILED ({a['breached']} at {a['breach_time']})" if a["breached"] else "not passed yet"
        p = a.get("pass_probability")
        out_console.print(f"{a['rules']}: {verdict}, final balance ${a['final_balance']:,.2f} after "
                          f"{a['trading_days']} trading days; Monte Carlo probability of passing: "
                          + ("-" if p is None else f"{p:.1%}"))
    if json_path is not None:
        json_path.write_text(json.dumps(result.to_json(), indent=2, default=str))
        out_console.print(f"json: {json_path}")
    if out is not None:
        out_console.print(f"report: {write_report(out, result.runs, bars=frame, main=SIGNALS_NAME, table=result.table)}")


@app.command("demo")
@friendly_errors
def demo(config: Optional[Path] = ConfigOpt):
    """Bundled ES bars -> dataset -> train all three (small budgets) -> walk-forward backtest -> HTML report."""
    from trademl.config import load_config
    from trademl.demo import run_demo

    run_demo(load_config(config), console())


@config_app.command("show")
@friendly_errors
def config_show(
    config: Optional[Path] = ConfigOpt,
    as_json: bool = typer.Option(False, "--json", help='JSON {"section.name": {"value": ..., "description": ...}}.'),
):
    """Every setting as resolved (defaults <- trademl.toml), with what it means."""
    import json

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from trademl.config import describe_settings, load_config

    settings = describe_settings(load_config(config))
    if as_json:
        typer.echo(json.dumps(settings, indent=2))
        return
    table = Table(title="trademl settings")
    table.add_column("setting", no_wrap=True)
    table.add_column("value", overflow="fold", max_width=32)
    table.add_column("description", overflow="fold")
    for name, s in settings.items():
        table.add_row(escape(name), escape(json.dumps(s["value"])), escape(s["description"]))
    Console().print(table)
