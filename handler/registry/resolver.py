"""One resolver for every route: a model as addressed (none, `name`, `name@alias`, a version) -> a version to serve.

The packaged model answers the root routes, and `/models/{its name}` where the registry has no such model. Alias
reads are cached for `ALIAS_TTL_S`, so a move reaches every warm environment within that bound; a version's
artifact is immutable, so a loaded version is kept until the memory budget needs its room (`VersionCache`).
"""

from __future__ import annotations

import json
import random
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from handler.gp.artifact import Manifest, S3Artifact, read_manifest
from handler.gp.model import LazyModel, LoadedModel
from handler.registry.cache import VersionCache
from handler.registry.names import DEFAULT_ALIAS, ModelRef
from handler.registry.store import (
    SERVABLE,
    Alias,
    RegistryNotConfiguredError,
    RegistryNotFoundError,
    RegistryStore,
    Version,
    artifact_key,
)

ALIAS_TTL_S = 5.0  # an alias move or a deletion reaches every warm environment within this (plus a request)
NAMES_SHOWN = 20


@dataclass(frozen=True)
class ServedModel:
    """The version that answers a request, and how it was chosen."""

    name: str
    version: str  # a registry version's number, or the packaged manifest's version string
    model: LazyModel
    source: str  # "packaged" or "registry"
    chosen_by: str = "packaged"  # "alias", "canary", "version" or "packaged"

    @property
    def label(self) -> str:
        """`X-Model-Version`: `name/3`."""
        return f"{self.name}/{self.version}"


class _Expiring:
    """Values read from DynamoDB, kept for `ttl_s`."""

    def __init__(self, ttl_s: float, clock: Callable[[], float]) -> None:
        self.ttl_s = ttl_s
        self.clock = clock
        self.values: dict[Any, tuple[float, Any]] = {}

    def get(self, key: Any, read: Callable[[], Any]) -> Any:
        now = self.clock()
        held = self.values.get(key)
        if held is not None and now - held[0] < self.ttl_s:
            return held[1]
        value = read()
        if len(self.values) > 10_000:  # names are checked, but callers choose them: never grow without bound
            self.values.clear()
        self.values[key] = (now, value)
        return value


class ModelResolver:
    def __init__(
        self,
        packaged: Callable[[], LazyModel],
        store: Callable[[], RegistryStore] | None,
        bucket: str,
        cache_budget_bytes: int,
        cache_dir: Path,
        retry_interval_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self.packaged = packaged
        self._store_factory = store
        self._store: RegistryStore | None = None
        self.bucket = bucket
        self.cache_dir = cache_dir
        self.retry_interval_s = retry_interval_s
        self.draw = draw
        self.reads = _Expiring(ALIAS_TTL_S, clock)
        self.versions = VersionCache(cache_budget_bytes, self._lazy_version, self._discard)
        self._lock = threading.Lock()

    @property
    def configured(self) -> bool:
        return self._store_factory is not None

    @property
    def store(self) -> RegistryStore:
        if self._store_factory is None:
            raise RegistryNotConfiguredError("this deployment has no model registry")
        with self._lock:
            if self._store is None:
                self._store = self._store_factory()
        return self._store

    def packaged_model(self) -> ServedModel:
        lazy = self.packaged()
        manifest = lazy.manifest()
        return ServedModel(manifest.name, manifest.version, lazy, "packaged")

    def registered(self, name: str) -> bool:
        """Whether the registry holds a model of this name (read at most once per `ALIAS_TTL_S`)."""
        return self.configured and self.reads.get(("model", name), lambda: self.store.model(name)) is not None

    def resolve(self, ref: ModelRef | None) -> ServedModel:
        if ref is None:
            return self.packaged_model()
        if not self.registered(ref.name):
            return self._packaged_by_name(ref)
        if ref.version is not None:
            return self._version(ref.name, ref.version, "version")
        alias = ref.alias or DEFAULT_ALIAS
        current: Alias | None = self.reads.get(("alias", ref.name, alias), lambda: self.store.alias(ref.name, alias))
        if current is None:
            names = sorted(a.alias for a in self.store.aliases(ref.name))
            raise RegistryNotFoundError(
                "model", f"{ref.name} has no alias {alias!r} (aliases: {', '.join(names) or 'none yet'})"
            )
        target = current.target
        if target.canary_version is not None and self.draw() < target.canary_weight:
            return self._version(ref.name, target.canary_version, "canary")
        return self._version(ref.name, target.version, "alias")

    def _packaged_by_name(self, ref: ModelRef) -> ServedModel:
        packaged = self.packaged_model()
        if ref.name == packaged.name and ref.version is None and (ref.alias or DEFAULT_ALIAS) == DEFAULT_ALIAS:
            return packaged
        if ref.name == packaged.name:
            raise RegistryNotFoundError(
                "model", f"{ref.name} is the packaged model: it has one version, served as {ref.name} (no aliases)"
            )
        names = [packaged.name, *(self.model_names() if self.configured else [])]
        shown = ", ".join(names[:NAMES_SHOWN]) + (f" and {len(names) - NAMES_SHOWN} more" if len(names) > 20 else "")
        raise RegistryNotFoundError("model", f"no model named {ref.name} (models: {shown})")

    def ready_versions(self, name: str) -> list[int]:
        """The READY versions, newest first (one small query, read again at most every ALIAS_TTL_S)."""
        states = self.reads.get(("states", name), lambda: self.store.version_states(name))
        return [version for version, state, _ in states if state == SERVABLE]

    def model_names(self) -> list[str]:
        return list(self.reads.get(("names",), self.store.model_names))

    def _version(self, name: str, version: int, chosen_by: str) -> ServedModel:
        record: Version | None = self.reads.get(("version", name, version), lambda: self.store.version(name, version))
        if record is None or record.state != SERVABLE:
            ready = self.ready_versions(name)
            state = "does not exist" if record is None else f"is {record.state}"
            raise RegistryNotFoundError("version", f"{name} version {version} {state} (READY: {_listed(ready)})")
        manifest = _manifest_of(record)
        lazy = self.versions.get(name, version, manifest)
        return ServedModel(name, str(version), lazy, "registry", chosen_by)

    def _lazy_version(self, name: str, version: int) -> LazyModel:
        folder = self.cache_dir / name / str(version)
        source = S3Artifact(f"s3://{self.bucket}/{artifact_key(name, version)}", folder, client=self.store.s3)
        return _DownloadOnce(source, folder, retry_interval_s=self.retry_interval_s)

    def _discard(self, name: str, version: int) -> None:
        shutil.rmtree(self.cache_dir / name / str(version), ignore_errors=True)


def _listed(versions: list[int], shown: int = 20) -> str:
    if not versions:
        return "none"
    more = f" and {len(versions) - shown} older" if len(versions) > shown else ""
    return ", ".join(map(str, versions[:shown])) + more


class _DownloadOnce(LazyModel):
    """A registry version: its file is removed once loaded (the arrays are in memory), so that /tmp holds at most the
    version being loaded, whatever the number of versions kept warm."""

    def __init__(self, source: S3Artifact, folder: Path, retry_interval_s: float) -> None:
        super().__init__(source, retry_interval_s=retry_interval_s)
        self.folder = folder

    def get(self) -> LoadedModel:
        if self.is_loaded:
            return super().get()
        loaded = super().get()
        shutil.rmtree(self.folder, ignore_errors=True)
        return loaded


def _manifest_of(record: Version) -> Manifest:
    return read_manifest(json.dumps(record.manifest).encode(), f"of {record.name} version {record.version}")
