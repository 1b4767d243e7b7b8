"""The registry's loaded versions: least recently used out first, never over the memory budget, an evicted version's
download removed; what the cache charges a version (`resident_bytes`) against what a loaded version holds; and a
load that takes its version's memory once, not three times (the budget's headroom assumes it)."""

from __future__ import annotations

import dataclasses
import gc
import random
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from handler.gp import posterior_file
from handler.gp.artifact import Manifest, PackagedArtifact, read_manifest
from handler.gp.model import LazyModel, LoadedModel
from handler.registry.cache import VersionCache, resident_bytes
from handler.registry.resolver import ModelResolver
from tests.large_models import write_synthetic_model
from tests.registry_harness import Registry, start_registry

TINY_POINT = {"x1": 0.5, "x2": 0.5, "x3": 0.5, "x4": 0.5}


@pytest.fixture(scope="module")
def synthetic_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache-models")


@pytest.fixture(scope="module")
def manifests(synthetic_folder: Path) -> dict[int, Manifest]:
    """Manifests of three posteriors of different sizes, by their number of points."""
    return {m: PackagedArtifact(write_synthetic_model(synthetic_folder, m)).fetch_manifest() for m in (100, 200, 300)}


class Loads:
    """The cache's make and discard, recording which versions were made and which discarded, in order."""

    def __init__(self) -> None:
        self.made: list[tuple[str, int]] = []
        self.discarded: list[tuple[str, int]] = []

    def make(self, name: str, version: int) -> Any:
        self.made.append((name, version))
        return object()  # the cache keeps whatever make gives; a LazyModel loads nothing until used

    def discard(self, name: str, version: int) -> None:
        self.discarded.append((name, version))


def test_the_least_recently_used_version_goes_first_and_hits_and_misses_are_counted(manifests):
    # given a budget that holds two versions of this size, not three
    manifest = manifests[200]
    size = resident_bytes(manifest)
    loads = Loads()
    cache = VersionCache(2 * size + size // 2, loads.make, loads.discard)
    # when a and b are loaded, a is used again, then c is loaded
    first_a = cache.get("a", 1, manifest)
    cache.get("b", 1, manifest)
    again_a = cache.get("a", 1, manifest)
    cache.get("c", 1, manifest)
    # then b, the least recently used, made room (not a, loaded first but used since), and a came from memory
    assert loads.discarded == [("b", 1)]
    assert list(cache.entries) == [("a", 1), ("c", 1)]
    assert again_a is first_a
    assert loads.made == [("a", 1), ("b", 1), ("c", 1)]
    stats = cache.stats()
    assert (stats["hits"], stats["misses"], stats["evictions"]) == (1, 3, 1)
    assert stats["used_bytes"] == 2 * size


def test_the_versions_held_never_exceed_the_budget(manifests):
    # given a budget under the three sizes together, and six models each in the three sizes
    sizes = {m: resident_bytes(manifest) for m, manifest in manifests.items()}
    budget = sum(sizes.values()) - 1
    loads = Loads()
    cache = VersionCache(budget, loads.make, loads.discard)
    rng = random.Random(3)
    # when versions are asked for at random
    for _ in range(300):
        name, m = f"model-{rng.randrange(6)}", rng.choice(list(manifests))
        cache.get(name, m, manifests[m])
        # then the one asked for is held, and what is held (each at its own size) fits the budget
        assert next(reversed(cache.entries)) == (name, m)
        assert cache.used_bytes == sum(sizes[version] for _, version in cache.entries) <= budget
    # and every version that went was discarded, once per eviction
    assert cache.evictions > 0
    assert len(loads.discarded) == cache.evictions
    assert cache.hits + cache.misses == 300


def test_a_version_larger_than_the_whole_budget_still_serves_alone(manifests):
    # given a budget smaller than the largest version, holding a small one
    small, large = manifests[100], manifests[300]
    loads = Loads()
    cache = VersionCache(resident_bytes(large) - 1, loads.make, loads.discard)
    cache.get("small", 1, small)
    # when the large version is asked for
    served = cache.get("large", 1, large)
    # then it is served, alone
    assert served is not None
    assert list(cache.entries) == [("large", 1)]
    assert loads.discarded == [("small", 1)]
    # and the next version asked for makes it go in turn
    cache.get("small", 1, small)
    assert list(cache.entries) == [("small", 1)]
    assert loads.discarded == [("small", 1), ("large", 1)]


@pytest.fixture
def registry_for_one(aws, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, app_with_model, tiny_posterior_path: Path):
    """The registry in-process with a cache budget that holds one version of the tiny model."""
    budget = resident_bytes(PackagedArtifact(tiny_posterior_path).fetch_manifest())
    return start_registry(monkeypatch, tmp_path, cache_budget_bytes=budget)


def test_versions_evicted_through_the_api_answer_again_and_leave_nothing_in_tmp(
    registry_for_one: Registry, tiny_posterior_path: Path, tmp_path: Path
):
    # given two versions of the tiny model and a cache that holds one
    registry = registry_for_one
    for _ in range(2):
        assert registry.publish("tiny", tiny_posterior_path)[1]["state"] == "READY"
    downloads = tmp_path / "registry" / "tiny"
    # when version 1 answers, then version 2 (which evicts 1), then version 1 again (which evicts 2)
    answers = [registry.call("POST", f"/models/tiny/versions/{v}/predict", TINY_POINT) for v in (1, 2, 1)]
    # then each answered, from the version asked for
    assert [status for status, _, _ in answers] == [200, 200, 200], answers
    assert [headers["X-Model-Version"] for _, headers, _ in answers] == ["tiny/1", "tiny/2", "tiny/1"]
    # and version 1 was downloaded again, one version is held, and /tmp keeps no version's file
    stats = registry.resolver.versions.stats()
    assert (stats["misses"], stats["evictions"], stats["versions"]) == (3, 2, 1)
    assert not list(downloads.glob("*/*.npz"))


def test_an_evicted_versions_download_folder_is_removed(tmp_path: Path, manifests):
    # given the resolver's cache with room for one version, and a download left in /tmp by each of two versions
    # (a version's file stays there while it loads, or after a failed load that will be retried)
    manifest = manifests[100]
    resolver = ModelResolver(
        packaged=lambda: None,
        store=None,
        bucket="registry",
        cache_budget_bytes=resident_bytes(manifest),
        cache_dir=tmp_path,
    )
    resolver.versions.make = Loads().make
    for name in ("first", "second"):
        (tmp_path / name / "1").mkdir(parents=True)
        (tmp_path / name / "1" / "model.npz").write_bytes(b"downloaded")
    # when the first version is loaded, then the second
    resolver.versions.get("first", 1, manifest)
    resolver.versions.get("second", 1, manifest)
    # then the first, evicted, left nothing behind; the second's folder is its own to manage
    assert not (tmp_path / "first" / "1").exists()
    assert (tmp_path / "second" / "1" / "model.npz").exists()


def array_bytes(loaded: LoadedModel) -> int:
    """The bytes of the distinct arrays a loaded posterior model holds (its posterior's, its training data's)."""
    model: Any = loaded.model
    candidates = [getattr(model.posterior, f.name) for f in dataclasses.fields(model.posterior)]
    for training in (model.training, loaded.training_data):
        if training is not None:
            candidates += [getattr(training, f.name) for f in dataclasses.fields(training)]
    distinct = {a.__array_interface__["data"][0]: a.nbytes for a in candidates if isinstance(a, np.ndarray)}
    return sum(distinct.values())


def held_per_version(path: Path, copies: int = 20) -> tuple[int, LoadedModel]:
    """What one more version of this file holds, as the resolver holds it (its manifest read from the version record,
    a lazy model loaded): Python's traced allocations, numpy's arrays included, over `copies` versions held at once."""
    text = path.with_name(path.name.removesuffix(".npz") + ".manifest.json").read_bytes()
    LazyModel(PackagedArtifact(path)).get()  # first-use imports and caches out of the measure
    tracing = tracemalloc.is_tracing()
    if not tracing:
        tracemalloc.start()
    try:
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        held = [(read_manifest(text, path.name), LazyModel(PackagedArtifact(path))) for _ in range(copies)]
        for _, lazy in held:
            lazy.get()
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        if not tracing:
            tracemalloc.stop()
    return grown // copies, held[0][1].get()


@pytest.mark.parametrize("model", ["tiny_posterior_path", "plant_model_path", "exact m=500 p=3", "sparse m=300 p=2"])
def test_resident_bytes_covers_what_a_loaded_version_holds_and_not_twice_that(
    model: str, request: pytest.FixtureRequest, synthetic_folder: Path
):
    # given a posterior file: a fitted GPy model's (one and two outputs), or a larger synthetic one
    if model.endswith("_path"):
        path = request.getfixturevalue(model)
    else:
        m, p = (500, 3) if model.startswith("exact") else (300, 2)
        path = write_synthetic_model(synthetic_folder, m, 3, p, sparse=model.startswith("sparse"))
    # when versions of it are loaded as the registry loads them
    held, loaded = held_per_version(path)
    estimate = resident_bytes(loaded.manifest)
    # then the cache's estimate, known from the manifest before any download, covers the arrays a version holds and
    # all it allocates, and is not twice that (the budget would hold half the versions it could)
    assert array_bytes(loaded) <= estimate
    assert held <= estimate <= 2 * held


def test_reading_a_posterior_file_takes_its_arrays_memory_once_not_three_times(tmp_path: Path):
    # given a posterior file of 1,500 points (an 18 MB factor)
    path = write_synthetic_model(tmp_path, 1500)
    manifest = PackagedArtifact(path).fetch_manifest()
    tracing = tracemalloc.is_tracing()
    if not tracing:
        tracemalloc.start()
    # when it is read
    try:
        gc.collect()
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        arrays = posterior_file.read(path, manifest.document["posterior"], len(manifest.features), 1)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        if not tracing:
            tracemalloc.stop()
    # then at its peak it held the arrays and a few read pieces (zipfile's readinto reads a whole request as one
    # bytes object, then copies it: read whole, a member took three times its size)
    data = sum(a.nbytes for a in arrays.values())
    assert peak <= data + 3 * posterior_file.READ_CHUNK_BYTES
