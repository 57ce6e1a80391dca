"""LightGBM win models (``lgb_5m``, ``lgb_30m``, any ``lgb_<h>m``): the calibrated probability
that a trade entered at the next open and closed h bars later wins after costs.

Training: ``trademl.models.lgbm`` (walk-forward CV, isotonic calibration on out-of-fold
predictions, ONNX export checked against LightGBM). Serving: ``LGBMRuntime``, the ONNX graph
plus the stored calibration knots; ``side`` is a model input (+1 long, -1 short).

The vote: a long and a short over the same window cannot both win after costs (the long
wins when the move beats the round-trip cost upwards, the short when it beats it
downwards), so "long wins" (p_l), "short wins" (p_s) and "neither clears its costs" are
three exclusive outcomes and the vote is their probabilities::

    buy = p_l    sell = p_s    hold = 1 - p_l - p_s      (divided by their sum)

Where calibration noise makes p_l + p_s exceed 1, hold is 0 and the two sides are
rescaled. (Treating them as independent, buy = p_l (1 - p_s), would make HOLD win whenever
p_l + p_s is near 1 and neither side is above ~0.71, silencing a real directional lean.)
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from trademl.errors import DataError, ModelStoreError, SchemaError
from trademl.models.base import ModelInputs, Runtime, TradeModel, Votes, check_onnx_contract
from trademl.models.calibration import IsotonicCalibrator
from trademl.models.novelty import NOVELTY_FILE, NoveltyReference
from trademl.models.onnx_session import open_session


def lgbm_vote(p_long, p_short) -> np.ndarray:
    """[n, 3] (hold, buy, sell) from the win probabilities of a long and of a short."""
    p_long = np.asarray(p_long, dtype=np.float64)
    p_short = np.asarray(p_short, dtype=np.float64)
    hold = np.clip(1.0 - p_long - p_short, 0.0, None)
    vote = np.stack([hold, p_long, p_short], axis=-1)
    return vote / vote.sum(axis=-1, keepdims=True)


def kind_for(horizon: int) -> str:
    return f"lgb_{int(horizon)}m"


def horizon_of(kind: str) -> int:
    match = re.fullmatch(r"lgb_(\d+)m", kind)
    if not match:
        raise ModelStoreError(f"{kind!r} is not a LightGBM win model kind (lgb_<h>m)", where="model store")
    return int(match.group(1))


class LGBMRuntime(Runtime):
    kind_pattern = "lgb_*m"
    order = 10

    def __init__(self, session, feature_names, horizon: int, calibrator: IsotonicCalibrator,
                 input_name: str = "input", output_name: str = "probabilities", version: str = "", kind: str = ""):
        self.session = session
        self.feature_names = list(feature_names)
        self.horizon = int(horizon)
        self.calibrator = calibrator
        self.version = version
        self.kind = kind or kind_for(horizon)
        self.history = 1
        self._input = input_name
        self._output = output_name
        self.novelty = None  # NoveltyReference of the training rows, when the model stored one

    @classmethod
    def load(cls, stored_model, threads: int | None = None) -> "LGBMRuntime":
        """From a StoredModel of kind lgb_<h>m (the store has verified its checksums)."""
        where = str(stored_model.path)
        if not cls.serves(stored_model.kind):
            raise ModelStoreError(f"expected an lgb_5m/lgb_30m model, got {stored_model.kind!r}", where=where)
        info = stored_model.manifest.get("model", {})
        names = stored_model.feature_names
        inputs = list(info.get("inputs", []))
        if inputs != names + [info.get("side_column", "side")]:
            raise SchemaError("the model's inputs are not its feature schema plus the side column", where=where)
        try:
            calibration = json.loads(stored_model.file("calibration.json").read_text())
        except json.JSONDecodeError as e:
            raise ModelStoreError(f"calibration.json is not JSON: {e}", where=where) from None
        calibrator = IsotonicCalibrator.from_dict(calibration, where=f"{where}/calibration.json")
        onnx_file = stored_model.file("model.onnx")
        session = open_session(onnx_file, threads, where=str(onnx_file))
        input_name, output_name = info.get("onnx_input", "input"), info.get("onnx_output", "probabilities")
        # the contract: one float input [n, F + 1] (the features, then the side), [n, 2] class probabilities
        check_onnx_contract(session, str(onnx_file), [(input_name, (None, len(inputs)))], [(output_name, (None, 2))],
                            only_these_outputs=False)
        runtime = cls(session, names, info["horizon"], calibrator, input_name, output_name, stored_model.version,
                      stored_model.kind)
        if NOVELTY_FILE in stored_model.files:  # older models have none: no novelty score
            runtime.novelty = NoveltyReference.load(stored_model.file(NOVELTY_FILE), len(names))
        return runtime

    def raw_probability(self, X, side) -> np.ndarray:
        """Uncalibrated tree probability of a win for rows X [n, F] traded on ``side`` (+1/-1)."""
        X = self._checked(X)
        side = np.broadcast_to(np.asarray(side, dtype=np.float32), (X.shape[0],))
        if not np.all((side == 1) | (side == -1)):
            raise DataError("side must be +1 (long) or -1 (short)", where=f"{self.kind} input")
        return self._run(X, side)

    def _raw_both_sides(self, rows) -> np.ndarray:
        """[2m] raw probabilities of rows [m, F] traded long, then short, in one ONNX call (the
        serving path: the sides are known good, so only the rows are checked)."""
        rows = self._checked(rows)
        m = len(rows)
        return self._run(np.concatenate([rows, rows]), np.r_[np.ones(m, np.float32), -np.ones(m, np.float32)])

    def _checked(self, X) -> np.ndarray:
        """Feature rows as float32 [n, F], or a DataError naming the shape the model reads."""
        X = np.asarray(X, dtype=np.float32)
        if X.ndim == 1:
            X = X[None, :]
        if X.ndim != 2 or X.shape[1] != len(self.feature_names):
            raise DataError(f"expected features of shape [n, {len(self.feature_names)}], got {list(X.shape)}",
                            where=f"{self.kind} input")
        return X

    def _run(self, X: np.ndarray, side: np.ndarray) -> np.ndarray:
        """The graph's win probability of rows [n, F] with their side [n]: the input [n, F + 1] filled in place."""
        n, width = X.shape
        x = np.empty((n, width + 1), np.float32)
        x[:, :width], x[:, width] = X, side
        return self.session.run([self._output], {self._input: x})[0][:, 1].astype(np.float64)

    def predict_win(self, X, side) -> np.ndarray:
        """Calibrated win probability [n]."""
        return self.calibrator.apply(self.raw_probability(X, side))

    def predict(self, inputs: ModelInputs) -> Votes:
        """Both sides of every decision bar in one ONNX call; a bar whose features are all
        missing is not predicted (LightGBM would only return its root's prior)."""
        rows = inputs.current_rows()
        n = len(inputs)
        if rows is None:
            return Votes.none(self.kind, n, "no `features` (or `bars`) in the request")
        usable = np.isfinite(rows).any(axis=1)
        p_long, p_short = np.full(n, np.nan), np.full(n, np.nan)
        m = int(usable.sum())
        if m:
            both = self.calibrator.apply(self._raw_both_sides(rows[usable] if m < n else rows))
            p_long[usable], p_short[usable] = both[:m], both[m:]
        reason = None if m == n else "every feature of the last bar is missing (warm-up: send more bars)"
        return Votes(self.kind, lgbm_vote(p_long, p_short), {"win_long": p_long, "win_short": p_short},
                     {f"win_{self.horizon}m_prob": ("win_long", "win_short")}, reason)


class LGBMWinModel(TradeModel):
    """The guide's win probability at ``horizon`` bars (5 and 30 by default), one model per horizon."""

    section = "lgbm"
    runtime = LGBMRuntime
    default_kinds = ("lgb_5m", "lgb_30m")

    def __init__(self, horizon: int = 5, config=None, **overrides):
        super().__init__(config, **overrides)
        self.horizon = int(horizon)

    @property
    def kind(self) -> str:
        return kind_for(self.horizon)

    @classmethod
    def for_dataset(cls, dataset, config=None) -> list["LGBMWinModel"]:
        """What ``train all`` trains: lgb_5m and lgb_30m where the dataset has those labels, else
        one per labelled horizon."""
        horizons = [h for h in (5, 30) if h in dataset.horizons] or list(dataset.horizons)
        return [cls(h, config) for h in horizons]

    @classmethod
    def load(cls, stored, config=None) -> "LGBMWinModel":
        model = super().load(stored, config)
        model.horizon = horizon_of(model.stored.kind)
        return model

    def print_report(self, console) -> None:
        from trademl.models.lgbm import print_reports

        print_reports([self.report], console)

    def _train(self, dataset, staging_root: Path, progress=None, expected_schema=None, source: str = "auto", **_):
        """``progress``: a callback (stage, done, total), as the CLI's bar gives; ``True`` (what
        ``train all`` passes every kind) has no bar of its own here. ``_``: other kinds' options."""
        from trademl.models.lgbm import train_win_model
        from trademl.models.store import ModelStore

        progress = progress if callable(progress) else None
        return train_win_model(dataset, self.horizon, self.config, ModelStore(staging_root), progress=progress,
                               expected_schema=expected_schema, source=source)
