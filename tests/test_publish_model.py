"""scripts/publish_model.py and `make publish-model`: a packaged model published to the registry (in-process, as in
tests/test_client_registry.py), promoted, and every refusal said in one line with exit status 1."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from scripts import publish_model
from tests.registry_harness import ADMIN_KEY_ID, Registry, start_registry
from tests.test_client_registry import client_of

ROOT = Path(__file__).resolve().parent.parent

# Stands in for the virtualenv's Python: says what it was asked, and which admin key its environment holds.
FAKE_PYTHON = """#!/bin/sh
echo "python $* key=$GPR_SURROGATE_ADMIN_KEY reason=$REASON"
"""


@pytest.fixture
def registry(aws, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, app_with_model) -> Registry:
    return start_registry(monkeypatch, tmp_path)


def test_the_script_publishes_and_promotes(registry: Registry, plant_model_path: Path, capsys):
    # given a packaged model and the admin key
    args = publish_model.parser().parse_args([str(plant_model_path), "--name", "plant", "--promote", "--reason", "v1"])
    # when it is published with --promote
    with client_of(registry, admin_key=ADMIN_KEY_ID) as client:
        status = publish_model.publish(args, client)
        described = client.model_versions("plant")
    # then the version is READY, live points at it, and the history says why
    assert status == 0, capsys.readouterr().err
    assert '"state": "READY"' in capsys.readouterr().out
    assert described["aliases"]["live"]["version"] == 1
    assert [(h["to"], h["reason"]) for h in described["history"]] == [({"version": 1}, "v1")]


def test_the_script_says_why_a_publish_was_refused(registry: Registry, plant_model_path: Path, tmp_path: Path, capsys):
    # given a model one bit off its manifest, and a reader without the admin key
    broken = tmp_path / "broken" / plant_model_path.name
    broken.parent.mkdir()
    manifest = plant_model_path.with_name(f"{plant_model_path.stem}.manifest.json")
    shutil.copy(manifest, broken.with_name(manifest.name))
    data = bytearray(plant_model_path.read_bytes())
    data[len(data) // 2] ^= 1
    broken.write_bytes(bytes(data))
    args = publish_model.parser().parse_args([str(broken), "--name", "plant", "--promote"])
    # when each publishes, then each exits 1 with one line naming the reason
    with client_of(registry, admin_key=ADMIN_KEY_ID) as admin:
        assert publish_model.publish(args, admin) == 1
    assert "plant version 1 failed its checks: the artifact does not match" in capsys.readouterr().err
    with client_of(registry) as reader:
        assert publish_model.publish(args, reader) == 1
    assert "HTTP 403: admin permission required" in capsys.readouterr().err


def test_a_missing_model_or_manifest_is_a_usage_error(tmp_path: Path, capsys):
    lone = tmp_path / "model.npz"
    assert publish_model.main([str(lone), "--name", "plant"]) == 2
    assert "no file" in capsys.readouterr().err
    lone.write_bytes(b"\x00")
    assert publish_model.main([str(lone), "--name", "plant"]) == 2
    assert "model.manifest.json" in capsys.readouterr().err


def test_a_wrong_name_or_alias_is_refused_before_anything_is_published(
    registry: Registry, plant_model_path: Path, capsys
):
    assert publish_model.main([str(plant_model_path), "--name", "plant", "--promote", "--alias", "Beta"]) == 2
    assert "--alias 'Beta'" in capsys.readouterr().err
    assert publish_model.main([str(plant_model_path), "--name", "../plant"]) == 2
    assert registry.store.model_names() == []


def fake_venv(folder: Path) -> Path:
    """A virtualenv whose Python only echoes, already set up (so `setup` has nothing to do)."""
    python = folder / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(FAKE_PYTHON)
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    (folder / "venv" / ".installed").touch()
    return folder / "venv"


def make(*arguments: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "GPR_SURROGATE_ADMIN_KEY"} | {"MAKEFLAGS": ""}
    return subprocess.run(
        ["make", "--no-print-directory", *arguments],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
    )


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_publish_model_passes_its_variables_to_the_script_and_keeps_the_key_off_the_screen(tmp_path: Path):
    venv = fake_venv(tmp_path)
    # when make publish-model runs with a key, a reason with quotes and PROMOTE, on another port
    result = make(
        "publish-model", f"VENV={venv}", "MODEL=m.npz", "NAME=plant", "PORT=3999", "ADMIN_KEY=s3cret",
        "PROMOTE=1", "REASON=it's \"better\"",
    )  # fmt: skip
    # then the script gets the model, the name, the local server on that port, --promote and the reason, the key
    # through its environment only: the command make echoes does not show it
    assert result.returncode == 0, result.stderr
    echoed, said = result.stdout.splitlines()[-2:]
    assert "s3cret" not in echoed
    assert said == (
        "python scripts/publish_model.py m.npz --name plant --url http://127.0.0.1:3999 --promote "
        '--reason it\'s "better" key=s3cret reason=it\'s "better"'
    )


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_publish_model_without_a_model_or_name_says_how_to_call_it(tmp_path: Path):
    result = make("publish-model", f"VENV={fake_venv(tmp_path)}", "MODEL=m.npz")
    assert result.returncode == 2
    assert result.stderr.startswith("usage: make publish-model MODEL=path/to/model.npz NAME=name")
