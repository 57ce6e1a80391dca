"""One exception type the CLI turns into a clear message instead of a traceback."""

from __future__ import annotations


class TradeMLError(Exception):
    """A problem the user can act on: bad input, missing model, wrong schema.

    ``where`` names the file, row, field or model the problem is in, so the message
    always points at something the user can open.
    """

    def __init__(self, message: str, *, where: str | None = None, hint: str | None = None):
        self.message = message
        self.where = where
        self.hint = hint
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.hint:
            text += f" ({self.hint})"
        return text


class DataError(TradeMLError):
    """Input data (bars, decision log, dataset) is malformed."""


class SchemaError(TradeMLError):
    """A model and the data it is given disagree on the feature schema."""


class ModelStoreError(TradeMLError):
    """A stored model is missing, corrupted or incompatible."""


class InsufficientDataError(TradeMLError):
    """Too few rows or sequences to train honestly."""
