"""probes/lodo_cli.py: where the recipe search's activations come from (local HF or a server)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch

import probes.remote
from probes import lodo_cli
from tests.support.tiny import make_tiny_llama


class FakeServer:
    """Stands in for :class:`probes.remote.ServerExtractor`: activations derived from the text."""

    calls: ClassVar[list[list[str]]] = []

    def __init__(self, url: str, key: str | None, num_layers: int) -> None:
        self.url, self.key, self.num_layers = url, key, num_layers

    def last_token(self, tok: Any, texts: Sequence[str], batch_size: int = 16) -> torch.Tensor:
        FakeServer.calls.append(list(texts))
        return torch.stack([torch.full((self.num_layers, 3), float(len(t))) for t in texts])


def test_server_extraction_goes_through_the_server_and_is_stored_apart(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRUTHSTEER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(probes.remote, "ServerExtractor", FakeServer)
    FakeServer.calls.clear()
    folder = make_tiny_llama(tmp_path / "tiny")
    model, tok, store = lodo_cli.extractor(folder, "sha256:tiny", 2, torch.bfloat16, "http://s:1", "k")
    assert isinstance(model, FakeServer) and (model.url, model.key) == ("http://s:1", "k")
    assert callable(getattr(tok, "apply_chat_template", None))
    assert store.dir == tmp_path / "cache" / "activations" / "sha256-tiny-bfloat16-server"

    acts = store.activations(model, tok, ["ab", "abcd"], progress=False)
    assert torch.equal(acts[:, 0, 0], torch.tensor([2.0, 4.0])) and acts.shape == (2, 2, 3)
    again = lodo_cli.extractor(folder, "sha256:tiny", 2, torch.bfloat16, "http://s:1", None)[2]
    assert torch.equal(again.activations(model, tok, ["abcd"], progress=False)[0], acts[1])
    assert FakeServer.calls == [["ab", "abcd"]]  # the second store read what the first stored


def test_local_extraction_is_the_hf_model_under_the_historical_key(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRUTHSTEER_CACHE", str(tmp_path / "cache"))
    model, _, store = lodo_cli.extractor(make_tiny_llama(tmp_path / "tiny"), "sha256:tiny", 2, torch.float32, None, None)
    assert isinstance(model, torch.nn.Module) and store.extract is None
    assert store.dir.name == "sha256-tiny-float32"


def test_bundles_leave_out_the_excluded_domains_and_reject_unknown_ones() -> None:
    from probes import datasets as ds
    from probes.lodo import DomainData

    def dom(name: str) -> DomainData:
        return DomainData(name, "empirical", np.zeros((2, 1, 1)), np.array([0, 1]), ["a", "b"], np.zeros(2, bool))

    doms = [dom("cities"), dom("truthfulqa"), dom("ethics")]
    assert [d.name for d in lodo_cli.bundle_domains(doms, "truthfulqa")] == ["cities", "ethics"]
    assert [d.name for d in lodo_cli.bundle_domains(doms, "")] == ["cities", "truthfulqa", "ethics"]
    assert [d.name for d in lodo_cli.bundle_domains(doms[:1], "truthfulqa,ethics")] == ["cities"]
    with pytest.raises(ds.DatasetError, match=r"unknown truth domain\(s\) \['nope'\]"):
        lodo_cli.bundle_domains(doms, "truthfulqa,nope")
    with pytest.raises(ds.DatasetError, match="no domain"):
        lodo_cli.bundle_domains(doms[1:2], "truthfulqa")
