"""Contract specifications: the one place a symbol becomes a tick size and a point value.

Point value = tick value / tick size: the dollars one full point of price is worth
for one contract. Every dollar figure in trademl goes through these numbers.

The CME futures the trader uses are listed here; any other instrument (a stock, an ETF,
spot FX, crypto) is described in the config (``[contracts.SPY] tick_size = 0.01,
point_value = 1.0``) or on the command line (``--symbol SPY --tick-size 0.01 --point-value 1``),
which lands in the same place. A listed root can be overridden the same way (``[contracts.ES]
commission_per_side = 1.2``). There is no default instrument: a symbol that cannot be told is
an error asking for ``--symbol`` (:func:`infer_symbol`).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from trademl.errors import TradeMLError


@dataclass(frozen=True)
class ContractSpec:
    root: str
    description: str
    tick_size: float
    tick_value: float
    exchange: str = "CME"
    # None: [costs] commission_per_side applies (an instrument may have its own, e.g. 0 for an ETF)
    commission_per_side: float | None = None

    @property
    def point_value(self) -> float:
        return self.tick_value / self.tick_size

    def ticks(self, price_distance):
        """Price distance expressed in ticks (works on scalars and arrays)."""
        return price_distance / self.tick_size

    def to_dict(self) -> dict:
        return asdict(self) | {"point_value": self.point_value}

    @classmethod
    def from_dict(cls, d: dict) -> "ContractSpec":
        """What :meth:`to_dict` wrote (a dataset or model manifest); ``point_value`` is derived."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


_SPECS = [
    ContractSpec("NQ", "E-mini Nasdaq-100", 0.25, 5.00),
    ContractSpec("MNQ", "Micro E-mini Nasdaq-100", 0.25, 0.50),
    ContractSpec("ES", "E-mini S&P 500", 0.25, 12.50),
    ContractSpec("MES", "Micro E-mini S&P 500", 0.25, 1.25),
    ContractSpec("YM", "E-mini Dow ($5)", 1.0, 5.00, "CBOT"),
    ContractSpec("MYM", "Micro E-mini Dow", 1.0, 0.50, "CBOT"),
    ContractSpec("RTY", "E-mini Russell 2000", 0.10, 5.00),
    ContractSpec("M2K", "Micro E-mini Russell 2000", 0.10, 0.50),
    ContractSpec("CL", "Crude Oil", 0.01, 10.00, "NYMEX"),
    ContractSpec("MCL", "Micro WTI Crude Oil", 0.01, 1.00, "NYMEX"),
    ContractSpec("GC", "Gold", 0.10, 10.00, "COMEX"),
    ContractSpec("MGC", "Micro Gold", 0.10, 1.00, "COMEX"),
    ContractSpec("6E", "Euro FX", 0.00005, 6.25),
]
CONTRACTS: dict[str, ContractSpec] = {s.root: s for s in _SPECS}

# Root, then optional month code + 1-2 digit year ("NQZ5", "NQZ25", "ESH14"),
# optionally with a space or exchange-style separator ("NQ Z5", "ES 03-24" is not handled).
_MONTHS = "FGHJKMNQUVXZ"
_SYMBOL_RE = re.compile(rf"^(?P<root>[0-9A-Z]+?)\s*(?P<month>[{_MONTHS}])(?P<year>\d{{1,2}})$")
# Continuous-contract names of charting vendors: TradingView "NQ1!" / "NQ2!", "NQ1", Yahoo "ES=F"
_CONTINUOUS_RE = re.compile(r"^(?P<root>[0-9A-Z]+?)(?:[12]!?|!|=F)$")
_DATED_RE = re.compile(r"^(?P<root>[A-Z0-9]+?)(?P<yyyymm>\d{6})$")  # ES201312: root + yyyymm
_HELP = ("pass --symbol (a root such as NQ or ES, or NQZ5), and for an instrument not listed describe it: "
         "--tick-size and --point-value, or [contracts.SYMBOL] tick_size = ..., point_value = ... in trademl.toml")


def root_of(symbol: str, known=CONTRACTS) -> str:
    """'NQZ5' -> 'NQ', 'MESH24' -> 'MES', 'NQ1!' / 'NQ1' / 'ES=F' -> their root, 'ES' -> 'ES'.
    ``known``: the roots that count (the listed ones, plus those the config describes).
    Unknown roots are returned as parsed."""
    s = symbol.strip().upper().lstrip("/")
    if s in known:
        return s
    for regex in (_SYMBOL_RE, _CONTINUOUS_RE, _DATED_RE):
        m = regex.match(s)
        if m and m.group("root") in known:
            return m.group("root")
    m = _SYMBOL_RE.match(s)
    return m.group("root") if m else s


def _config(config):
    from trademl.config import resolve_config

    return resolve_config(config)


def known_roots(config=None) -> set[str]:
    """The listed roots and those described in the config's [contracts]."""
    return set(CONTRACTS) | {k.upper() for k in _config(config).contracts}


def contract_spec(symbol: str | None, spec: ContractSpec | dict | None = None, *, config=None) -> ContractSpec:
    """The spec for a symbol or root. ``spec`` (a ContractSpec or its dict) is used as given;
    else the listed spec with the config's ``[contracts.ROOT]`` applied over it (``config``: a
    Config, a path or None for ./trademl.toml); an instrument that is neither is an error."""
    if spec is not None:
        return spec if isinstance(spec, ContractSpec) else ContractSpec.from_dict(spec)
    if not symbol or not str(symbol).strip():
        raise TradeMLError("no instrument: the data names no contract and no symbol was given",
                           where="symbol", hint=_HELP)
    cfg = _config(config)
    overrides = {k.upper(): v for k, v in cfg.contracts.items()}
    root = root_of(symbol, CONTRACTS.keys() | overrides.keys())
    base, override = CONTRACTS.get(root), overrides.get(root)
    if override is None:
        if base is None:
            raise TradeMLError(f"unknown contract symbol {symbol!r} (root {root!r}): its tick size and point value "
                               "are not known", where="symbol",
                               hint=f"known roots: {', '.join(CONTRACTS)}; {_HELP}")
        return base
    return _described(root, base, override)


def _described(root: str, base: ContractSpec | None, override) -> ContractSpec:
    """``base`` (None for an instrument not listed) with the fields ``override`` sets."""
    given = {k: v for k, v in override.model_dump().items() if v is not None}
    missing = [k for k in ("tick_size", "point_value") if base is None and k not in given]
    if missing:
        raise TradeMLError(f"instrument {root!r} is not listed, so its {' and '.join(missing)} must be given",
                           where=f"[contracts.{root}]", hint=_HELP)
    tick_size = given.get("tick_size", base.tick_size if base else None)
    point_value = given.get("point_value", base.point_value if base else None)
    return ContractSpec(
        root, given.get("description") or (base.description if base else f"{root} (described in the config)"),
        tick_size, tick_size * point_value, given.get("exchange") or (base.exchange if base else ""),
        given.get("commission_per_side", base.commission_per_side if base else None))


def spec_of_bars(bars, symbol: str | None = None, config=None) -> ContractSpec:
    """The contract of a bars frame: the spec it carries (``attrs["contract"]``, set by a dataset
    built with one) when it is that symbol's, else :func:`contract_spec` of the symbol."""
    carried = bars.attrs.get("contract")
    symbol = symbol or bars.attrs.get("symbol")
    if isinstance(carried, dict) and (symbol is None or root_of(symbol, {carried["root"]}) == carried["root"]):
        return ContractSpec.from_dict(carried)
    return contract_spec(symbol, config=config)


def infer_symbol(given: str | None = None, *, contract: str | None = None, path=None, config=None) -> str | None:
    """The instrument of some bars, never a silent default: ``given`` (--symbol), else the last
    value of a ``contract``/``symbol`` column or the file name's first token (es_1min.csv,
    NQ1!_2024.csv, SPY.csv) when it names a known root (listed or in [contracts]), else
    [data] symbol when the config sets one; None when nothing tells (the caller asks for --symbol)."""
    if given:
        return given
    known = known_roots(config)
    if contract:
        root = root_of(str(contract), known)
        if root in known:
            return root
    if path is not None:
        token = re.split(r"[_\-\s.]", Path(path).name.split(".")[0])[0]
        root = root_of(token, known) if token else ""
        if root in known:
            return root
    return _config(config).data.symbol


def require_symbol(symbol: str | None, source=None) -> str:
    """``symbol``, or the error asking for --symbol (naming the file the instrument is not told by)."""
    if symbol:
        return symbol
    raise TradeMLError("cannot tell the instrument: no contract or symbol column names a known root, and nor "
                       "does the file name", where=str(source or "symbol"), hint=_HELP)
