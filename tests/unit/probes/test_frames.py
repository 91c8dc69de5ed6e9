"""Reading frames and the per-text activation store on a tiny random Llama."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from probes.actstore import ActivationStore, model_key, text_key
from probes.datasets import Dataset, Example
from probes.extract import last_token_activations, load_hf
from probes.frames import FRAMES, framed, get_frame
from steering.bundle import ProbeFrame
from steering.errors import BundleError
from tests.support.tiny import make_tiny_llama


class ChatTok:
    def apply_chat_template(self, messages: list[dict[str, str]], tokenize: bool, add_generation_prompt: bool) -> str:
        assert not tokenize and add_generation_prompt
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"


def test_frames_put_the_statement_where_training_and_serving_read_it() -> None:
    s = "  Paris is in France. "
    assert FRAMES["raw"].apply(s) == s
    assert FRAMES["chat"].apply(s, ChatTok()) == ("<user>Is the following statement true or false?\n\n"
                                                  "Paris is in France.<assistant>")
    assert FRAMES["verdict"].apply(s, ChatTok()) == ("<user>Is the following statement true or false?\n\n"
                                                     "Paris is in France.<assistant>The statement is")
    assert FRAMES["repe"].apply(s).endswith("Paris is in France.\nThe amount of truthfulness in the statement is")
    with pytest.raises(BundleError, match="chat template"):
        FRAMES["chat"].apply(s, object())
    with pytest.raises(ValueError, match="exactly once"):
        ProbeFrame(name="bad", kind="text", template="no placeholder")
    with pytest.raises(ValueError, match="only a chat frame"):
        ProbeFrame(name="bad", kind="text", template="{statement}", answer="It is")
    with pytest.raises(ValueError, match="unknown frame"):
        get_frame("nope")


def test_framed_datasets_keep_labels_groups_and_flags() -> None:
    data = Dataset("d", [Example("A is B.", 1, "g1", "dom", True, "empirical"), Example("A is C.", 0, "g1")], "p", "L")
    assert framed(data, None, ChatTok()) is data and framed(data, FRAMES["raw"], ChatTok()) is data
    out = framed(data, FRAMES["verdict"], ChatTok())
    assert out.texts() == [FRAMES["verdict"].apply(t, ChatTok()) for t in data.texts()]
    assert [(e.label, e.group, e.domain, e.negated, e.truth_type) for e in out.examples] == \
        [(1, "g1", "dom", True, "empirical"), (0, "g1", "", None, "")]
    assert (out.path, out.license, out.name) == ("p", "L", "d (verdict frame)")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, object]:
    return load_hf(make_tiny_llama(tmp_path_factory.mktemp("tiny")))


def test_the_store_returns_exact_extractions_and_extracts_each_text_once(
        tiny: tuple[object, object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, tok = tiny
    texts = ["paris is in france", "rome is in peru", "lima is not in italy"]
    # the store extracts in chunks of 2; a matrix product over another batch size may round
    # differently in the last bit on some CPUs, so the reference extracts the same chunks
    want = torch.cat([last_token_activations(model, tok, texts[:2], progress=False),
                      last_token_activations(model, tok, texts[2:], progress=False)])
    store = ActivationStore(model_key("sha256:tiny", torch.float32), tmp_path, chunk=2)
    got = store.activations(model, tok, texts, progress=False)
    assert torch.equal(got, want)
    assert len(list(store.dir.glob("shard-*.safetensors"))) == 2  # chunks of 2: resumable

    calls: list[int] = []
    import probes.actstore as mod

    real = mod.last_token_activations
    monkeypatch.setattr(mod, "last_token_activations", lambda m, t, xs, *a, **k: calls.append(len(xs)) or real(m, t, xs, *a, **k))
    reopened = ActivationStore(model_key("sha256:tiny", torch.float32), tmp_path)
    assert all(t in reopened for t in texts) and text_key(texts[0]) != text_key(texts[1])
    again = reopened.activations(model, tok, [texts[2], "paris is not in peru", texts[0]], progress=False)
    assert calls == [1]  # only the new text was extracted
    assert torch.equal(again[0], want[2]) and torch.equal(again[2], want[0])
    assert torch.equal(again[1], last_token_activations(model, tok, ["paris is not in peru"], progress=False)[0])
