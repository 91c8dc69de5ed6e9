"""``truthsteer directions recommend`` on a tiny bundle file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from server.cli.main import main
from steering.bundle import load_bundle, save_bundle
from tests.support.tiny import make_bundle


def test_recommend_records_validated_ops_notes_and_numbers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = save_bundle(make_bundle("sycophancy"), tmp_path / "sycophancy.safetensors")
    ops = [{"direction": "sycophancy", "strength": -4.0, "layers": [1, 2]}]
    assert main(["directions", "recommend", str(path), "--steering", json.dumps(ops), "--notes", "chosen on train",
                 "--metric", "switch_rate=0.25", "--metric", "n=64"]) == 0
    b = load_bundle(path)
    assert b.meta.recommended_steering == ops and b.meta.recommended_steering_notes == "chosen on train"
    assert b.meta.metrics["recommended.switch_rate"] == 0.25 and b.meta.metrics["recommended.n"] == 64
    before = make_bundle("sycophancy")
    assert all(b.vectors[k].equal(before.vectors[k]) for k in before.vectors)  # only metadata changes
    assert main(["directions", "recommend", str(path), "--clear"]) == 0
    cleared = load_bundle(path)
    assert cleared.meta.recommended_steering == [] and "recommended.n" not in cleared.meta.metrics


def test_recommend_refuses_ops_the_server_would_refuse(tmp_path: Path) -> None:
    path = save_bundle(make_bundle("sycophancy"), tmp_path / "sycophancy.safetensors")
    bad = [{"direction": "sycophancy", "layers": [99]}]
    assert main(["directions", "recommend", str(path), "--steering", json.dumps(bad)]) != 0
    assert load_bundle(path).meta.recommended_steering == []  # nothing written
