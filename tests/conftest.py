from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from handler.model import LazyModel, manifest_path_for
from handler.schemas import FEATURES
from scripts.train_model import train

SHIPPED_MODEL = Path(__file__).resolve().parent.parent / "model_artifacts" / "pretrained-model.pkl"


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small GP trained by the repo's own script (30 points, one restart): fast, and real."""
    path = tmp_path_factory.mktemp("tiny-model") / "pretrained-model.pkl"
    train(path, n_train=30, n_holdout=200, restarts=1, seed=7)
    return path


@pytest.fixture
def model_copy(tiny_model_path: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny model and its manifest, free to break."""
    path = tmp_path / tiny_model_path.name
    shutil.copy(tiny_model_path, path)
    shutil.copy(manifest_path_for(tiny_model_path), manifest_path_for(path))
    return path


@pytest.fixture
def app_with_model(monkeypatch: pytest.MonkeyPatch, tiny_model_path: Path):
    """handler.app with a fresh, unloaded LazyModel on the tiny model (what a cold start sees)."""
    from handler import app

    monkeypatch.setattr(app, "model", LazyModel(tiny_model_path, FEATURES))
    return app
