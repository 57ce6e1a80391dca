"""Contract specifications of the CME futures the trader uses.

Point value = tick value / tick size: the dollars one full point of price is worth
for one contract. Every dollar figure in trademl goes through these numbers.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from trademl.errors import TradeMLError


@dataclass(frozen=True)
class ContractSpec:
    root: str
    description: str
    tick_size: float
    tick_value: float
    exchange: str = "CME"

    @property
    def point_value(self) -> float:
        return self.tick_value / self.tick_size

    def ticks(self, price_distance):
        """Price distance expressed in ticks (works on scalars and arrays)."""
        return price_distance / self.tick_size

    def to_dict(self) -> dict:
        return asdict(self) | {"point_value": self.point_value}


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


def root_of(symbol: str) -> str:
    """'NQZ5' -> 'NQ', 'MESH24' -> 'MES', 'ES' -> 'ES'. Unknown roots are returned as parsed."""
    s = symbol.strip().upper().lstrip("/")
    if s in CONTRACTS:
        return s
    m = _SYMBOL_RE.match(s)
    if m and m.group("root") in CONTRACTS:
        return m.group("root")
    return m.group("root") if m else s


def contract_spec(symbol: str, spec: ContractSpec | dict | None = None) -> ContractSpec:
    """The spec for a symbol or root; ``spec`` overrides (and is required for unknown roots)."""
    if spec is not None:
        return spec if isinstance(spec, ContractSpec) else ContractSpec(**spec)
    root = root_of(symbol)
    try:
        return CONTRACTS[root]
    except KeyError:
        known = ", ".join(CONTRACTS)
        raise TradeMLError(
            f"unknown contract symbol {symbol!r} (root {root!r})",
            where="symbol",
            hint=f"known roots: {known}; for another instrument pass a spec with tick_size and tick_value",
        ) from None
