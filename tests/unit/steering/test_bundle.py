from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from steering.bundle import (
    METADATA_KEY,
    DirectionBundle,
    check_compatible,
    load_bundle,
    load_directory,
    save_bundle,
)
from steering.errors import BundleError
from steering.gguf_io import export_gguf, import_gguf
from steering.model_info import ModelInfo
from tests.support.tiny import INFO, make_bundle


def test_safetensors_round_trip(tmp_path: Path) -> None:
    b = make_bundle()
    p = save_bundle(b, tmp_path / "truth.safetensors")
    back = load_bundle(p, INFO)
    assert back.meta == b.meta
    assert set(back.vectors) == set(b.vectors)
    for k in b.vectors:
        assert torch.equal(back.vectors[k], b.vectors[k])
    assert back.probe_weight is not None and b.probe_weight is not None
    assert torch.equal(back.probe_weight, b.probe_weight)
    assert not list(tmp_path.glob("*.tmp"))  # written atomically


def test_gguf_round_trip(tmp_path: Path) -> None:
    b = make_bundle(layers=[1, 2, 3], probe=False)
    g = export_gguf(b, tmp_path / "cv.gguf", strength=2.0)
    back = import_gguf(g, INFO, name="imported")
    assert sorted(back.vectors) == [1, 2, 3]
    for k in (1, 2, 3):
        assert torch.equal(back.vectors[k], 2.0 * b.vectors[k])
    assert back.meta.recommended_strength == 1.0
    # and through the safetensors format again
    again = load_bundle(save_bundle(back, tmp_path / "imported.safetensors"), INFO)
    assert torch.equal(again.vectors[2], back.vectors[2])


def test_gguf_rejects_wrong_hidden_size(tmp_path: Path) -> None:
    g = export_gguf(make_bundle(layers=[1, 2], probe=False), tmp_path / "cv.gguf")
    other = ModelInfo(name="wide", hidden_size=16, num_layers=4)
    with pytest.raises(BundleError, match=r"direction\.1: 8 values, model hidden size is 16"):
        import_gguf(g, other, name="x")


def test_gguf_export_cannot_hold_layer_zero_only(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="layer 0"):
        export_gguf(make_bundle(layers=[0], probe=False), tmp_path / "cv.gguf")


def _write(tmp_path: Path, tensors: dict[str, torch.Tensor], meta: object) -> Path:
    p = tmp_path / "bad.safetensors"
    md = {METADATA_KEY: meta if isinstance(meta, str) else json.dumps(meta)}
    save_file(tensors, str(p), metadata=md)
    return p


def _good() -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    b = make_bundle()
    tensors = {f"direction.{k}": v for k, v in b.vectors.items()}
    assert b.probe_weight is not None
    tensors["probe.weight"] = b.probe_weight
    return tensors, json.loads(b.meta.model_dump_json(exclude_none=True))


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda t, m: t.__setitem__("direction.1", torch.full((8,), float("nan"))), r"direction\.1: contains NaN"),
        (lambda t, m: t.__setitem__("direction.2", torch.zeros(7)), r"direction\.2: shape \(7,\)"),
        (lambda t, m: t.__setitem__("direction.2", torch.zeros(2, 8)), r"direction\.2: shape \(2, 8\)"),
        (lambda t, m: t.pop("direction.3"), r"tensors: .*missing \[3\]"),
        (lambda t, m: t.__setitem__("junk", torch.zeros(8)), r"junk: unknown tensor"),
        (lambda t, m: t.pop("probe.weight"), r"probe: probe metadata and tensor"),
        (lambda t, m: t.__setitem__("probe.weight", torch.full((8,), float("inf"))), r"probe\.weight: contains NaN or inf"),
        (lambda t, m: m.__setitem__("surprise", 1), r"surprise: Extra inputs are not permitted"),
        (lambda t, m: m["model"].__setitem__("extra", 1), r"model\.extra: Extra inputs"),
        (lambda t, m: m.pop("name"), r"name: Field required"),
        (lambda t, m: m.__setitem__("name", "bad name!"), r"name: String should match"),
        (lambda t, m: m.__setitem__("format_version", 9), r"format_version: .*unsupported"),
        (lambda t, m: m.__setitem__("recommended_layers", [7]), r"recommended_layers: \[7\] have no direction"),
        (lambda t, m: m.__setitem__("recommended_layers", []), r"recommended_layers: must list"),
        (lambda t, m: m.__setitem__("layers", [0, 1, 2, 9]), r"layers: layer 9 outside"),
        (lambda t, m: m.__setitem__("recommended_strength", "x"), r"recommended_strength: Input should be a valid number"),
        (lambda t, m: m["probe"].__setitem__("layer", 12), r"probe\.layer: 12 outside"),
        (lambda t, m: m["layer_stats"].__setitem__("17", {"norm": 1.0}), r"layer_stats: keys \['17'\]"),
    ],
)
def test_malformed_bundles_name_file_and_field(tmp_path: Path, mutate: object, match: str) -> None:
    tensors, meta = _good()
    mutate(tensors, meta)  # type: ignore[operator]
    p = _write(tmp_path, tensors, meta)
    with pytest.raises(BundleError, match=match) as ei:
        load_bundle(p)
    assert str(p) in str(ei.value)


def test_missing_or_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no such file"):
        load_bundle(tmp_path / "nope.safetensors")
    bad = tmp_path / "corrupt.safetensors"
    bad.write_bytes(b"\x00" * 20)
    with pytest.raises(BundleError, match="not a readable safetensors"):
        load_bundle(bad)
    tensors, _ = _good()
    p = tmp_path / "nometa.safetensors"
    save_file(tensors, str(p))
    with pytest.raises(BundleError, match="metadata: missing header key"):
        load_bundle(p)
    p2 = _write(tmp_path, tensors, "{not json")
    with pytest.raises(BundleError, match="metadata: invalid JSON"):
        load_bundle(p2)


def test_model_compatibility() -> None:
    b = make_bundle()
    check_compatible(b, INFO)
    with pytest.raises(BundleError, match=r"model\.hidden_size: 8 != served model's 16"):
        check_compatible(b, ModelInfo("m", 16, 4, fingerprint="sha256:tiny"))
    with pytest.raises(BundleError, match=r"model\.num_layers: 4 != served model's 6"):
        check_compatible(b, ModelInfo("m", 8, 6, fingerprint="sha256:tiny"))
    other = ModelInfo("finetune", 8, 4, fingerprint="sha256:other")
    with pytest.raises(BundleError, match=r"model\.fingerprint: .*pass force"):
        check_compatible(b, other)
    check_compatible(b, other, force=True)
    check_compatible(b, ModelInfo("unknown", 8, 4))  # unknown fingerprint: not checked


def test_directory_rejects_duplicate_names(tmp_path: Path) -> None:
    save_bundle(make_bundle("a"), tmp_path / "one.safetensors")
    save_bundle(make_bundle("a", seed=1), tmp_path / "two.safetensors")
    with pytest.raises(BundleError, match="'a' also defined by"):
        load_directory(tmp_path)


def test_recommended_steering_is_validated_like_a_request() -> None:
    from steering.engine import check_recommendations

    good = make_bundle("truth")
    ok = good.meta.model_copy(update={"recommended_steering": [{"direction": "truth", "strength": -2.0,
                                                                 "layers": [1, 2]}]})
    bundles = {"truth": DirectionBundle(meta=ok, vectors=good.vectors, probe_weight=good.probe_weight)}
    check_recommendations(bundles, INFO.num_layers)
    for bad, param in (({"direction": "truth", "layers": [9]}, "recommended_steering[0].layers"),
                       ({"direction": "nope"}, "recommended_steering[0].direction"),
                       ({"direction": "truth", "op": "twist"}, "recommended_steering[0]"),
                       ({"direction": "truth", "strength": 1e9}, "recommended_steering[0].strength")):
        meta = good.meta.model_copy(update={"recommended_steering": [bad]})
        b = DirectionBundle(meta=meta, vectors=good.vectors, probe_weight=good.probe_weight, source="t.safetensors")
        with pytest.raises(BundleError, match=rf"t\.safetensors: {re.escape(param)}"):
            check_recommendations({"truth": b}, INFO.num_layers)


REPO = Path(__file__).resolve().parents[3]
SHIPPED = sorted((REPO / "directions").rglob("*.safetensors"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_shipped_bundle_cites_data_inside_the_repository(path: Path) -> None:
    """Bundle metadata names the files it was trained on as repository paths that exist, with a
    license; a clone has nothing beside it (no ``../shared``)."""
    refs = load_bundle(path).meta.training.datasets
    assert refs
    for ref in refs:
        assert not Path(ref.path).is_absolute(), (ref.name, ref.path)
        assert (REPO / ref.path).is_file(), (ref.name, ref.path)
        assert ref.license, ref.name


@pytest.mark.parametrize("path", [p for p in SHIPPED if p.name.startswith("truth") and "heads" not in p.name],
                         ids=lambda p: p.relative_to(REPO).as_posix())
def test_shipped_truth_bundles_never_train_on_truthfulqa(path: Path) -> None:
    """TruthfulQA is the benchmark of the intervention evaluation (``make eval``): a shipped truth
    probe or direction fitted on its answers would leak into it (the head-level ITI bundles are
    trained on one fold of it on purpose and scored on the other, see docs/eval.md)."""
    meta = load_bundle(path).meta
    assert meta.training.method == "domain-mean-diff"  # a leave-one-domain-out bundle
    assert not [r.name for r in meta.training.datasets if "truthfulqa" in r.name or "TruthfulQA" in r.path]
    assert {"lodo_test_mean", "lodo_test_pooled"} <= set(meta.metrics) or meta.name != "truth"
