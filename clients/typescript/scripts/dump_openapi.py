"""Write the service's OpenAPI document to clients/typescript/openapi.json.

    .venv/bin/python clients/typescript/scripts/dump_openapi.py   # then: npm run generate

The TypeScript types (src/generated/api.ts) are generated from this file by
openapi-typescript; tests/test_serve.py fails when either file is stale.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from trademl.serve.app import openapi_schema

TARGET = Path(__file__).resolve().parents[1] / "openapi.json"


def render() -> str:
    return json.dumps(openapi_schema(), indent=2, sort_keys=True) + "\n"


def main() -> int:
    TARGET.write_text(render())
    print(f"wrote {TARGET}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
