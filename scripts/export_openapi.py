"""Write the API's OpenAPI document to docs/openapi.json (a test fails when the two drift apart).

python scripts/export_openapi.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from handler.openapi import openapi_document  # noqa: E402

OPENAPI_PATH = ROOT / "docs" / "openapi.json"


def render() -> str:
    return json.dumps(openapi_document(), indent=2) + "\n"


if __name__ == "__main__":
    OPENAPI_PATH.parent.mkdir(exist_ok=True)
    OPENAPI_PATH.write_text(render())
    print(f"wrote {OPENAPI_PATH.relative_to(ROOT)}")
