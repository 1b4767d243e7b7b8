"""`--dist loadgroup` that groups again: tests sharing an xdist_group run in one pytest-xdist worker.

pytest-xdist 3.8 has each worker append a test's xdist_group to its node id (`...::test@group`), and the
controller schedules by that suffix. pytest 9.2 made the node id a structure that this no longer changes
(pytest-xdist#1386): no test carries a group, each is scheduled alone, and every worker sets up every server.
Here (a plugin: tests/conftest.py loads it) the workers hand the controller the groups in a file instead, and the
controller schedules each group as one unit of work, as xdist's LoadGroupScheduling would, in collection order.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from xdist.scheduler import LoadScopeScheduling

# The key, in each worker's `workerinput`, of the folder where it writes the groups it collected.
FOLDER_KEY = "test_groups_folder"
FOLDER = pytest.StashKey[Path]()  # the controller's


def group_of(item: pytest.Item) -> str | None:
    """The item's group as xdist names it: its xdist_group marks' names, sorted and joined (None without one)."""
    names = {
        str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
        for mark in item.iter_markers("xdist_group")
    }
    return "_".join(sorted(names)) or None


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's worker sends the controller its collection
def pytest_collection_finish(session: pytest.Session) -> None:
    """In a worker: each grouped test's node id -> its group, for the controller (nothing outside a worker)."""
    workerinput = getattr(session.config, "workerinput", None)
    if workerinput is None or FOLDER_KEY not in workerinput:
        return
    groups = {item.nodeid: group for item in session.items if (group := group_of(item)) is not None}
    path = Path(workerinput[FOLDER_KEY]) / f"{workerinput['workerid']}.json"
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(groups))
    partial.replace(path)  # whole or absent: the controller reads it once every worker has collected


class GroupScheduling(LoadScopeScheduling):
    """xdist's load scheduling by units of work: a group's tests together, any other test alone.

    Units are handed out in collection order (tests/conftest.py puts the longest first), not reordered by size.
    """

    def __init__(self, config: pytest.Config, log, folder: Path) -> None:
        super().__init__(config, log)
        self.folder = folder
        self.groups: dict[str, str] | None = None

    def _split_scope(self, nodeid: str) -> str:
        if self.groups is None:  # first called by schedule(), once every worker has sent its collection
            self.groups = {}
            for path in sorted(self.folder.glob("*.json")):
                self.groups.update(json.loads(path.read_text()))
        group = self.groups.get(nodeid)
        return nodeid if group is None else f"@{group}"


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """In the controller, for each worker before it starts: the folder where it writes its groups."""
    config = node.config
    if FOLDER not in config.stash:
        config.stash[FOLDER] = Path(tempfile.mkdtemp(prefix="pytest-xdist-groups-"))
    node.workerinput[FOLDER_KEY] = str(config.stash[FOLDER])


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log) -> GroupScheduling | None:
    if config.getoption("dist") != "loadgroup" or FOLDER not in config.stash:
        return None  # pytest-xdist's own
    config.option.loadscopereorder = False  # in collection order, not the largest group first
    return GroupScheduling(config, log, config.stash[FOLDER])


def pytest_unconfigure(config: pytest.Config) -> None:
    if FOLDER in config.stash:
        shutil.rmtree(config.stash[FOLDER], ignore_errors=True)
