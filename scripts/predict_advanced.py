#!/usr/bin/env python3
"""The guide's entry point: one JSON market snapshot on stdin -> one JSON prediction on stdout.

    echo '{"symbol": "NQZ5", "features": {...}, "position": 2}' | python3 scripts/predict_advanced.py

and, with scripts/ on sys.path, the guide's ``from predict_advanced import EnsemblePredictor``.
Only the predict path is imported (numpy, onnxruntime, pydantic): no torch, no lightgbm,
no pandas unless the request sends raw bars. Exit code 2 = bad request, 3 = no usable model.
"""

from __future__ import annotations

import argparse
import sys

if __name__ == "__main__":  # the guide's `python3 scripts/predict_advanced.py` with the system python3
    import _venv

    _venv.use_project_venv()

from trademl.predict.ensemble import EnsemblePredictor  # noqa: E402
from trademl.predict.stdio import predict_stdio  # noqa: E402

__all__ = ["EnsemblePredictor"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-root", help="model store folder (default: [paths] model_root)")
    parser.add_argument("--config", "-c", help="TOML config file (default: ./trademl.toml if present)")
    parser.add_argument("--no-log", action="store_true", help="do not append to logs/predictions.*")
    args = parser.parse_args(argv)
    return predict_stdio(sys.stdin, sys.stdout, model_root=args.model_root, config=args.config, record=not args.no_log)


if __name__ == "__main__":
    sys.exit(main())
