"""The `trademl` command (entry point ``trademl.cli:main``).

The commands are a Typer app in ``trademl.cli.commands``; ``from trademl.cli import app``
still finds it. This module itself imports nothing heavy: a bot that starts one
``trademl predict`` per decision pays for all of a cold start (issue 17). So ``main`` answers
``predict`` here, its three options read by argparse, and hands every other command line to
Typer, as does any predict command line the fast parser is not sure of (``--help``, a typo,
an unusual option form): Typer's messages and exit codes stay the one source for those.
Measured with bench/bench_predict.py on a shared 2-core machine, of a ~0.73 s cold predict
this saves Typer's import and parsing (~0.08 s), the interpreter's teardown (~0.09 s) and the
cyclic garbage collector (~0.03 s).
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import logging
import os
import sys

# The help of the options of `trademl predict`, shared with the Typer command (one home).
PREDICT_HELP = "One JSON snapshot on stdin -> one JSON prediction on stdout (exit 2: bad request, 3: no model)."
MODEL_ROOT_HELP = "Model store (default: [paths] model_root)."
NO_LOG_HELP = "Do not append to logs/predictions.*."
CONFIG_HELP = "TOML config file (default: ./trademl.toml if present)."

# The exact option tokens the fast parser takes; anything else goes to Typer. Click and
# argparse read a few forms differently (`-c=x` is the value "=x" for click), and a value
# that starts with "-" is taken by click but refused by argparse: only these forms agree.
_FAST_FLAGS = ("--model-root", "--no-log", "--config", "-c")
_FAST_ASSIGNS = ("--model-root=", "--config=")

# click.style's codes, for the same stderr lines on a terminal as typer.secho writes.
_ANSI = {"red": "\x1b[31m", "yellow": "\x1b[33m"}


def main() -> None:
    """The console script: `trademl predict` without Typer, every other command through it.
    A predict answered here ends the process itself, with its exit code (see _exit_now)."""
    args = sys.argv[1:]
    if args[:1] in (["predict"], ["serve"]):
        _one_blas_thread()
    if args[:1] == ["predict"]:
        options = _fast_predict_options(args[1:])
        if options is not None:
            # One request, then exit: the cyclic collector's ~100 passes over the objects of the
            # imports (~0.03 s) would free nothing that the exit does not.
            gc.disable()
            # pydantic looks for plugins among the entry points of every installed distribution
            # on its first model (~0.04 s here); trademl uses none. An explicit setting wins.
            os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
            _exit_now(_predict(options))
    importlib.import_module("trademl.cli.commands").app()


def _one_blas_thread() -> None:
    """Serving does one row's small products at a time, where numpy's OpenBLAS threads only spin
    beside the one doing the work: measured on the guide's request, a cold `trademl predict` used
    0.49 s of CPU with them and 0.36 s without (wall 0.40 -> 0.37 s, medians of 20, 2 cores). Set
    before numpy is imported, which reads it once; an explicit setting wins."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def _exit_now(code: int) -> None:
    """Exit without the interpreter's teardown: with numpy, pydantic and ONNX Runtime loaded,
    finalising their modules takes ~0.09 s after the answer is out, and there is nothing left
    for it to do. The answer is flushed here, the logging handlers (the guide's log line) as at
    a normal exit, and the prediction log's row is committed and its connection closed by
    predict_stdio once the answer was written."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a reader that went away, a closed stream: nothing to keep
            pass
    logging.shutdown()
    os._exit(code)


def __getattr__(name: str):
    """`from trademl.cli import app` (tests, scripts/): the Typer module's names, imported on first use."""
    if name.startswith("__"):  # import machinery and introspection probe these: no Typer for them
        raise AttributeError(name)
    return getattr(importlib.import_module("trademl.cli.commands"), name)


# ----------------------------------------------------------------------------- `trademl predict`


def _predict_parser():
    import argparse
    from pathlib import Path

    parser = argparse.ArgumentParser(prog="trademl predict", description=PREDICT_HELP, add_help=False,
                                     allow_abbrev=False, exit_on_error=False)
    parser.add_argument("--model-root", type=Path, default=None, help=MODEL_ROOT_HELP)
    parser.add_argument("--no-log", action="store_true", help=NO_LOG_HELP)
    parser.add_argument("--config", "-c", type=Path, default=None, help=CONFIG_HELP)
    return parser


def _fast_predict_options(args: list[str]):
    """The options of a `trademl predict` command line, or None when Typer must read it."""
    import argparse

    if "--" in args or any(a.startswith("-") and a not in _FAST_FLAGS and not a.startswith(_FAST_ASSIGNS)
                           for a in args):
        return None
    try:
        options, extra = _predict_parser().parse_known_args(args)
    except argparse.ArgumentError:  # e.g. an option without its value: Typer says so
        return None
    return None if extra else options


def _predict(options) -> int:
    """What the Typer command does: predict_stdio under friendly_errors, and its exit code."""
    from trademl.errors import TradeMLError

    try:
        with warnings_to_logging():
            from trademl.predict.stdio import predict_stdio  # in here as in the Typer command: ^C in it is 130

            return predict_stdio(sys.stdin, sys.stdout, model_root=options.model_root, config=options.config,
                                 record=not options.no_log)
    except TradeMLError as e:
        _echo(f"error: {e}", "red")
        return 2
    except KeyboardInterrupt:
        _echo("interrupted: nothing half-written was kept", "yellow")
        return 130
    except BrokenPipeError:  # the reader went away: exit 1 without a traceback, as click does
        _silence_stdout()
        return 1


def _silence_stdout() -> None:
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the flush at exit cannot fail again


def _echo(text: str, color: str) -> None:
    """One line on stderr, coloured on a terminal only: what typer.secho(text, fg=color, err=True) writes."""
    stream = sys.stderr
    if stream.isatty():
        text = f"{_ANSI[color]}{text}\x1b[0m"
    stream.write(text + "\n")
    stream.flush()


# ----------------------------------------------------------------------------- warnings

# Warnings reach the user through logging, on this logger (the one logging.captureWarnings
# writes to). captureWarnings itself is not used: its record is warnings.formatwarning's
# "file:line: RuntimeWarning: ..." block with our source line, where the user needs the message.
WARNINGS_LOGGER = "py.warnings"


class _OncePerMessage(logging.Filter):
    """Each distinct message once: a warning raised per chunk, file or fold is one line, not dozens."""

    def __init__(self):
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if text in self.seen:
            return False
        self.seen.add(text)
        return True


def _echo_warning(text: str) -> None:
    _echo(text, "yellow")


class _EchoHandler(logging.Handler):
    """Writes each record through ``echo``: the Typer commands pass typer.secho's, which writes
    to the stderr of the moment (a CliRunner swaps it per invocation), in yellow on a terminal."""

    def __init__(self, echo=_echo_warning):
        super().__init__()
        self.echo = echo

    def emit(self, record: logging.LogRecord) -> None:
        self.echo(self.format(record))


def _log_warning(message, category, filename, lineno, file=None, line=None) -> None:
    logging.getLogger(WARNINGS_LOGGER).warning("%s", message)


@contextlib.contextmanager
def warnings_to_logging(echo=_echo_warning):
    """For one command: every warning shown (warnings.warn of the library, numpy's RuntimeWarnings)
    becomes one "warning: <message>" line on stderr through logging, once per distinct message.
    The warning filters are left as they are (-W and PYTHONWARNINGS still apply)."""
    import warnings

    logger = logging.getLogger(WARNINGS_LOGGER)
    handler = _EchoHandler(echo)
    handler.setFormatter(logging.Formatter("warning: %(message)s"))
    handler.addFilter(_OncePerMessage())
    logger.addHandler(handler)
    propagate, logger.propagate = logger.propagate, False  # the root logger's handlers would print it twice
    try:
        with warnings.catch_warnings():  # restores warnings.showwarning when the command ends
            warnings.showwarning = _log_warning
            yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
