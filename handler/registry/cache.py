"""Loaded versions kept warm: an LRU bounded by the memory they take, not by their count."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from handler.gp.artifact import Manifest
from handler.gp.model import LazyModel

logger = logging.getLogger(__name__)

# A loaded version holds its file's arrays (read in place: the file's size, to its headers) and little else: the
# inputs scaled for the kernel (m x (d + 2)) and its manifest's objects (tens of KB). Measured (benchmarks/results.md,
# "resident_bytes against the memory a loaded version takes", m = 500 to 8,000, p = 1 and 3): each further version
# held grows the RSS by its arrays' nbytes, so this estimate is 1.25x that; a process's first load grows it 4-9 MiB
# more (the read's pieces, which the allocator keeps once per process, not per version), and a load peaks at ~1.1x
# its version. The quarter is that slack. A request's working arrays (sliced to 64 MiB, handler.api.deadline) are
# not per version: the memory left outside the budget (Settings.registry_cache_bytes) holds them.
RESIDENT_FACTOR = 1.25
WORKING_BYTES = 64 * 2**20


def resident_bytes(manifest: Manifest) -> int:
    """What a loaded version of this manifest keeps in memory, from its shapes alone (known before any download)."""
    from handler.gp import posterior_file

    shapes = posterior_file.expected_shapes(
        manifest.document.get("posterior"), len(manifest.features), len(manifest.outputs)
    )
    return int(RESIDENT_FACTOR * posterior_file.largest_file_bytes(shapes))


class VersionCache:
    """Versions by (name, version): immutable, so kept until memory is needed; the least recently used goes first.

    `budget_bytes` is what this environment gives the registry's models (`Settings.registry_cache_bytes`). A version
    larger than the whole budget still serves, alone.
    """

    def __init__(
        self,
        budget_bytes: int,
        make: Callable[[str, int], LazyModel],
        discard: Callable[[str, int], None] = lambda name, version: None,
    ) -> None:
        self.budget_bytes = budget_bytes
        self.make = make
        self.discard = discard  # what an evicted version leaves behind (its downloaded file)
        self.entries: OrderedDict[tuple[str, int], tuple[LazyModel, int]] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self._lock = threading.Lock()

    @property
    def used_bytes(self) -> int:
        return sum(size for _, size in self.entries.values())

    def get(self, name: str, version: int, manifest: Manifest) -> LazyModel:
        key = (name, version)
        with self._lock:
            if key in self.entries:
                self.entries.move_to_end(key)
                self.hits += 1
                return self.entries[key][0]
            self.misses += 1
            size = resident_bytes(manifest)
            while self.entries and self.used_bytes + size > self.budget_bytes:
                evicted, _ = self.entries.popitem(last=False)
                self.evictions += 1
                self.discard(*evicted)
                logger.info("model version evicted", extra={"model": f"{evicted[0]}/{evicted[1]}"})
            model = self.make(name, version)
            self.entries[key] = (model, size)
            return model

    def stats(self) -> dict[str, Any]:
        return {
            "versions": len(self.entries),
            "used_bytes": self.used_bytes,
            "budget_bytes": self.budget_bytes,
            "hits": self.hits,
            "misses": self.misses,
            "evictions": self.evictions,
        }
