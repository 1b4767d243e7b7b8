"""What the app's routers need of it: the settings, the model (manifest first, then loaded), the parser.

`handler.app` owns these and hands them to each router at import (`configure`), so routers never import
the app: no import cycle, and tests can swap the model under every route at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from handler.api.parsing import RequestParser
from handler.config import Settings
from handler.gp.artifact import Manifest
from handler.gp.model import LoadedModel


@dataclass(frozen=True)
class Services:
    settings: Settings
    manifest: Callable[[], Manifest]
    parser: Callable[[tuple[str, ...]], RequestParser]
    loaded_model: Callable[[], LoadedModel]
