from __future__ import annotations

import json
from pathlib import Path

import pytest

from steering import models
from steering.errors import ModelError
from steering.model_info import describe, fingerprint_folder


@pytest.fixture
def fake_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """A packaged 'model' whose conversion only writes a marker file, counting calls."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "m.gguf").write_bytes(b"GGUF" + b"\x01" * 4096)
    spec = models.PackagedModel("fake", "fakepkg", "fake-pkg", "m.gguf", "Fake")
    monkeypatch.setitem(models.PACKAGED_MODELS, "fake", spec)
    monkeypatch.setattr(models, "find_packaged_gguf", lambda s: pkg / "m.gguf")
    calls = {"n": 0}

    def convert(src: Path, out: Path) -> None:
        calls["n"] += 1
        (out / "config.json").write_text(json.dumps({"hidden_size": 8, "num_hidden_layers": 2}))

    monkeypatch.setattr(models, "convert_gguf", convert)
    return calls


def test_prepare_is_idempotent_and_atomic(tmp_path: Path, fake_package: dict[str, int]) -> None:
    root = tmp_path / "cache"
    first = models.prepare_packaged("fake", root)
    assert (first / "config.json").is_file() and fake_package["n"] == 1
    assert models.prepare_packaged("fake", root) == first and fake_package["n"] == 1
    assert not [p for p in root.iterdir() if p.name.startswith(".Fake")]  # no temp folders left


def test_half_written_folder_is_never_used(tmp_path: Path, fake_package: dict[str, int]) -> None:
    root = tmp_path / "cache"
    target = models.prepare_packaged("fake", root)
    (target / ".truthsteer-complete").unlink()  # as if a run died before finishing
    (target / "config.json").unlink()
    again = models.prepare_packaged("fake", root)
    assert again == target and (target / "config.json").is_file() and fake_package["n"] == 2


def test_failed_conversion_leaves_nothing(tmp_path: Path, fake_package: dict[str, int], monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(src: Path, out: Path) -> None:
        (out / "partial").write_text("x")
        raise RuntimeError("disk full")

    monkeypatch.setattr(models, "convert_gguf", boom)
    root = tmp_path / "cache"
    with pytest.raises(RuntimeError, match="disk full"):
        models.prepare_packaged("fake", root)
    assert [p.name for p in root.iterdir() if not p.name.endswith(".lock")] == []


def test_resolve_model_takes_local_folders_and_rejects_bad_ones(tmp_path: Path) -> None:
    folder = tmp_path / "hf"
    folder.mkdir()
    with pytest.raises(ModelError, match=r"no config\.json"):
        models.resolve_model(str(folder))
    (folder / "config.json").write_text("{}")
    assert models.resolve_model(str(folder)) == folder.resolve()
    with pytest.raises(ModelError, match="no such model folder"):
        models.resolve_model(str(tmp_path / "missing" / "model"))
    with pytest.raises(ModelError, match="unknown packaged model"):
        models.prepare_packaged("nope")


def test_fingerprint_tracks_weights(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"hidden_size": 4, "num_hidden_layers": 1, "architectures": ["X"]}))
    save_file({"w": torch.zeros(4, 4)}, str(folder / "model.safetensors"))
    a = fingerprint_folder(folder)
    save_file({"w": torch.ones(4, 4)}, str(folder / "model.safetensors"))
    b = fingerprint_folder(folder)
    assert a != b and a.startswith("sha256:")
    info = describe(folder)
    assert (info.hidden_size, info.num_layers, info.architecture, info.fingerprint) == (4, 1, "X", b)
