"""The `trademl` command. Each sub-command is a thin call into a library function.

Imports of heavy modules (torch, lightgbm, pandas) happen inside the commands, so that
`trademl predict` starts fast and `trademl --help` is instant.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="ML trading signals for futures minute bars.", no_args_is_help=True, add_completion=False)
data_app = typer.Typer(help="Load bars and build datasets.", no_args_is_help=True)
train_app = typer.Typer(help="Train models into the model store.", no_args_is_help=True)
models_app = typer.Typer(help="Inspect the model store.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(train_app, name="train")
app.add_typer(models_app, name="models")

ConfigOpt = typer.Option(None, "--config", "-c", help="TOML config file (default: ./trademl.toml if present).")


def friendly_errors(fn):
    """Turn the errors a user can act on into one clear line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from trademl.errors import TradeMLError

        try:
            return fn(*args, **kwargs)
        except TradeMLError as e:
            typer.secho(f"error: {e}", fg="red", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.secho("interrupted: nothing half-written was kept", fg="yellow", err=True)
            raise typer.Exit(130) from None

    return wrapper


def console():
    from rich.console import Console

    return Console(stderr=True)


@data_app.command("build")
@friendly_errors
def data_build(
    bars: Optional[Path] = typer.Argument(None, help="Bars file (CSV/TXT/Parquet). Default: the bundled ES sample."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Dataset folder (default: artifacts/data/<name>)."),
    decisions: Optional[Path] = typer.Option(None, "--decisions", help="Decision log (CSV or JSONL) of the bot."),
    symbol: Optional[str] = typer.Option(None, "--symbol", help="Contract symbol or root, e.g. NQZ5 (default: config)."),
    repair: bool = typer.Option(False, "--repair", help="Drop/dedupe bad rows and report them instead of failing."),
    resample: Optional[int] = typer.Option(None, "--resample", help="Resample to N-minute bars first."),
    config: Optional[Path] = ConfigOpt,
):
    """Bars (+ optional decision log) -> Parquet dataset + manifest."""
    from trademl.config import load_config
    from trademl.data.dataset import build_dataset, print_summary

    cfg = load_config(config)
    result = build_dataset(
        bars_path=bars, out_dir=out, decisions_path=decisions, symbol=symbol,
        repair=repair, resample_minutes=resample, config=cfg, progress=True,
    )
    print_summary(result, console())


@app.command("demo")
@friendly_errors
def demo(config: Optional[Path] = ConfigOpt):
    """Build the bundled ES dataset and show what it holds."""
    from trademl.config import load_config
    from trademl.demo import run_demo

    run_demo(load_config(config), console())


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
