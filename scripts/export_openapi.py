"""Write the API's OpenAPI document to docs/openapi.json (a test fails when the two drift apart).

python scripts/export_openapi.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from handler.api.openapi import openapi_document  # noqa: E402
from handler.config import load_settings  # noqa: E402

OPENAPI_PATH = ROOT / "docs" / "openapi.json"


def document() -> dict[str, Any]:
    """The document for the model and settings the environment names (by default the packaged model)."""
    settings = load_settings()
    return openapi_document(settings.artifact_source().fetch_manifest(), settings)


def render() -> str:
    return json.dumps(document(), indent=2) + "\n"


if __name__ == "__main__":
    OPENAPI_PATH.parent.mkdir(exist_ok=True)
    OPENAPI_PATH.write_text(render())
    print(f"wrote {OPENAPI_PATH.relative_to(ROOT)}")
