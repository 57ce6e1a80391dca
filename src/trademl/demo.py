"""`trademl demo`: the whole flow on the bundled real ES bars, on two CPU cores."""

from __future__ import annotations

from trademl.config import Config


def run_demo(config: Config, console) -> None:
    from trademl.data.dataset import build_dataset, print_summary

    console.rule("1. dataset: bundled ES 1-minute bars -> features + labels")
    result = build_dataset(config=config, progress=True)
    print_summary(result, console)
