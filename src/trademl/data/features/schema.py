"""FeatureSchema: the ordered feature names a model was trained on, and a hash of them.

Every model stores its schema; data with another schema is refused with a message that
names the missing, extra and reordered features instead of silently feeding columns to
the wrong inputs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from trademl.data.features.registry import FEATURE_VERSION, FEATURES
from trademl.errors import SchemaError

PASSTHROUGH = {"passthrough": True}  # the parameters recorded for an extra bar column


def _params_of(name: str) -> dict:
    spec = FEATURES.get(name)
    return dict(spec.params) if spec is not None else dict(PASSTHROUGH)


@dataclass(frozen=True)
class FeatureSchema:
    names: tuple[str, ...]
    version: int = FEATURE_VERSION
    params: dict = field(default_factory=dict, compare=False)
    # {name: why} of default features the data could not give (volume features of bars with
    # no volume): a record for the reader, not part of the hash, since the names already differ
    left_out: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "names", tuple(self.names))
        if len(set(self.names)) != len(self.names):
            dupes = sorted({n for n in self.names if self.names.count(n) > 1})
            raise SchemaError(f"feature names repeat: {dupes}", where="feature schema")
        filled = {n: dict(self.params.get(n) or _params_of(n)) for n in self.names}
        object.__setattr__(self, "params", filled)

    @classmethod
    def for_names(cls, names, extra_columns=(), left_out=None) -> FeatureSchema:
        return cls(tuple(names), FEATURE_VERSION, {c: dict(PASSTHROUGH) for c in extra_columns}, dict(left_out or {}))

    @property
    def hash(self) -> str:
        """sha256 of the version and the ordered (name, parameters) pairs."""
        payload = json.dumps(
            {"version": self.version, "features": [[n, self.params[n]] for n in self.names]},
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(payload.encode()).hexdigest()

    def __len__(self) -> int:
        return len(self.names)

    def to_dict(self) -> dict:
        out = {"names": list(self.names), "version": self.version, "params": self.params, "hash": self.hash}
        return out | ({"left_out": dict(self.left_out)} if self.left_out else {})

    @classmethod
    def from_dict(cls, data: dict) -> FeatureSchema:
        try:
            schema = cls(tuple(data["names"]), int(data.get("version", FEATURE_VERSION)), dict(data.get("params") or {}),
                         dict(data.get("left_out") or {}))
        except (KeyError, TypeError, ValueError) as e:
            raise SchemaError(f"not a feature schema: {e!r}", where="feature schema") from None
        stored = data.get("hash")
        if stored is not None and stored != schema.hash:
            raise SchemaError(
                f"stored hash {stored[:12]} does not match its names and parameters ({schema.hash[:12]})",
                where="feature schema",
                hint="the schema was edited or corrupted",
            )
        return schema

    def check_compatible(self, other: FeatureSchema, *, where: str = "feature schema") -> None:
        """Raise SchemaError naming every difference if ``other`` (the data) differs from self."""
        if self.hash == other.hash:
            return
        mine, theirs = set(self.names), set(other.names)
        problems = []
        if missing := [n for n in self.names if n not in theirs]:
            problems.append(f"missing {missing}")
        if extra := [n for n in other.names if n not in mine]:
            problems.append(f"extra {extra}")
        common_mine = [n for n in self.names if n in theirs]
        common_theirs = [n for n in other.names if n in mine]
        if reordered := [a for a, b in zip(common_mine, common_theirs) if a != b]:
            problems.append(f"reordered {reordered}")
        if changed := [n for n in common_mine if self.params[n] != other.params[n]]:
            problems.append(f"different parameters for {changed}")
        if self.version != other.version:
            problems.append(f"feature version {other.version} instead of {self.version}")
        raise SchemaError(
            "the features differ from the expected schema: " + "; ".join(problems),
            where=where,
            hint=f"expected {len(self.names)} features with hash {self.hash[:12]}, got {len(other.names)} "
            f"with hash {other.hash[:12]}",
        )
