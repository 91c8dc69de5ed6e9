from __future__ import annotations

import json

import pytest

from steering.decoding.spec import (
    DecodingSpec,
    ResolvedDecoding,
    bucket_layers,
    parse_decoding,
    resolve_decoding,
)
from steering.errors import SpecError

SMOL_LAYERS = 30  # SmolLM2-135M-Instruct, tied embeddings


def _resolve(raw: object, num_layers: int = SMOL_LAYERS, tied: bool = True) -> ResolvedDecoding:
    return resolve_decoding(parse_decoding(raw), num_layers, tie_word_embeddings=tied)


@pytest.mark.parametrize(
    ("num_layers", "tied", "low", "high"),
    [
        # SmolLM2-135M: 30 layers, tied head, so the low bucket starts at 2.
        (30, True, [2, 4, 6, 8, 10, 12, 14], [15, 17, 19, 21, 23, 25, 27, 29]),
        (30, False, [0, 2, 4, 6, 8, 10, 12, 14], [15, 17, 19, 21, 23, 25, 27, 29]),
        (24, True, [2, 4, 6, 8, 10], [12, 14, 16, 18, 20, 22]),
        (24, False, [0, 2, 4, 6, 8, 10], [12, 14, 16, 18, 20, 22]),
        # LLaMA-7B (32 layers, untied): the DoLa repository's "0,2,...,14" and "16,...,30".
        (32, False, [0, 2, 4, 6, 8, 10, 12, 14], [16, 18, 20, 22, 24, 26, 28, 30]),
        (40, False, [0, 2, 4, 6, 8, 10, 12, 14, 16, 18], [20, 22, 24, 26, 28, 30, 32, 34, 36, 38]),
        # More than 40 layers: the first / last 20 layers, every other one.
        (48, False, [0, 2, 4, 6, 8, 10, 12, 14, 16, 18], [28, 30, 32, 34, 36, 38, 40, 42, 44, 46]),
        (48, True, [2, 4, 6, 8, 10, 12, 14, 16, 18], [28, 30, 32, 34, 36, 38, 40, 42, 44, 46]),
        # Shallow tied models: start == N // 2 gives a single low layer.
        (4, True, [2], [2]),
        (2, True, [1], [1]),
    ],
)
def test_buckets_follow_hf_dola(num_layers: int, tied: bool, low: list[int], high: list[int]) -> None:
    assert bucket_layers("low", num_layers, tied) == low
    assert bucket_layers("high", num_layers, tied) == high
    assert _resolve({"method": "dola", "premature_layers": "low"}, num_layers, tied).layers == tuple(low)


def test_defaults_are_filled_in() -> None:
    assert _resolve({"method": "dola"}) == ResolvedDecoding(
        method="dola",
        layers=(15, 17, 19, 21, 23, 25, 27, 29),
        weights=(),
        alpha=0.1,
        entropy_threshold=None,
        repetition_penalty=1.0,
    )
    assert _resolve({"method": "none"}) == ResolvedDecoding(method="none")
    assert not _resolve({"method": "none"}).active


def test_contrast_weights_default_uniform_and_normalise() -> None:
    one = _resolve({"method": "contrast", "premature_layers": [8]})
    assert (one.layers, one.weights) == ((8,), (1.0,))
    uniform = _resolve({"method": "contrast", "premature_layers": [4, 8, 12, 16]})
    assert uniform.weights == (0.25, 0.25, 0.25, 0.25)
    fused = _resolve({"method": "contrast", "premature_layers": [4, 8, 12], "weights": [1, 0, 3]})
    assert fused.weights == (0.25, 0.0, 0.75)
    bucket = _resolve({"method": "contrast", "premature_layers": "low", "weights": [1] * 7})
    assert bucket.layers == (2, 4, 6, 8, 10, 12, 14) and sum(bucket.weights) == pytest.approx(1.0)


def test_wire_round_trip_is_json() -> None:
    cfgs = [
        _resolve({"method": "dola", "premature_layers": [0, 29], "alpha": 0.25, "repetition_penalty": 1.2}),
        _resolve({"method": "contrast", "premature_layers": [3, 9], "weights": [2, 1], "entropy_threshold": 1.5}),
        _resolve({"method": "none"}),
        _resolve({"method": "dola", "alpha": 0}),  # the constraint off (DoLa's TruthfulQA-MC scoring)
        _resolve({"method": "dola", "alpha": 0, "echo_scores": "contrast"}),
    ]
    assert cfgs[-2].alpha == 0.0 and cfgs[-2].echo_scores == "logprobs" and cfgs[-1].echo_scores == "contrast"
    assert "echo_scores" not in cfgs[-2].to_wire()  # default configs keep their earlier wire form
    for c in cfgs:
        wire = json.loads(json.dumps(c.to_wire()))
        assert ResolvedDecoding.from_wire(wire) == c
    assert cfgs[1].to_wire() == {
        "method": "contrast",
        "layers": [3, 9],
        "weights": [2 / 3, 1 / 3],
        "alpha": 0.1,
        "entropy_threshold": 1.5,
        "repetition_penalty": 1.0,
    }


@pytest.mark.parametrize(
    ("raw", "param", "match"),
    [
        ({"method": "dola", "premature_layers": [30]}, "decoding.premature_layers", r"\[30\] outside \[0, 30\)"),
        ({"method": "dola", "premature_layers": [-1, 3]}, "decoding.premature_layers", r"\[-1\] outside"),
        ({"method": "dola", "premature_layers": []}, "decoding.premature_layers", "must not be empty"),
        ({"method": "dola", "premature_layers": [4, 4]}, "decoding.premature_layers", "duplicates"),
        ({"method": "dola", "weights": [1.0]}, "decoding.weights", "only valid with method 'contrast'"),
        ({"method": "none", "weights": [1.0]}, "decoding.weights", "only valid with method 'contrast'"),
        (
            {"method": "contrast", "premature_layers": [2, 4, 6], "weights": [1, 1]},
            "decoding.weights",
            r"got 2 weights for 3 premature layers \[2, 4, 6\]",
        ),
        ({"method": "contrast", "premature_layers": [2, 4], "weights": [0, 0]}, "decoding.weights", "all be zero"),
    ],
)
def test_resolution_errors_name_the_parameter(raw: object, param: str, match: str) -> None:
    with pytest.raises(SpecError, match=match) as ei:
        _resolve(raw)
    assert ei.value.param == param


@pytest.mark.parametrize(
    ("raw", "param", "match"),
    [
        ({}, "decoding.method", "Field required"),
        ({"method": "greedy"}, "decoding.method", "'dola', 'contrast' or 'none'"),
        ({"method": "dola", "premature_layers": "middle"}, "decoding.premature_layers", "'low', 'high' or a list"),
        ({"method": "dola", "premature_layers": 5}, "decoding.premature_layers", "'low', 'high' or a list"),
        ({"method": "dola", "premature_layers": [1.5]}, "decoding.premature_layers[0]", "valid integer"),
        ({"method": "dola", "alpha": -0.1}, "decoding.alpha", "greater than or equal to 0"),
        ({"method": "dola", "alpha": 1.5}, "decoding.alpha", "less than or equal to 1"),
        ({"method": "dola", "echo_scores": "raw"}, "decoding.echo_scores", "'logprobs' or 'contrast'"),
        ({"method": "dola", "alpha": float("nan")}, "decoding.alpha", "finite"),
        ({"method": "dola", "entropy_threshold": -0.1}, "decoding.entropy_threshold", "greater than or equal to 0"),
        ({"method": "dola", "entropy_threshold": float("inf")}, "decoding.entropy_threshold", "finite"),
        ({"method": "dola", "repetition_penalty": 0.9}, "decoding.repetition_penalty", "greater than or equal to 1"),
        ({"method": "dola", "repetition_penalty": float("inf")}, "decoding.repetition_penalty", "finite"),
        ({"method": "contrast", "weights": [1, -1]}, "decoding.weights[1]", "greater than or equal to 0"),
        ({"method": "contrast", "weights": [1, float("nan")]}, "decoding.weights[1]", "finite"),
        ({"method": "dola", "layers": [3]}, "decoding.layers", "Extra inputs are not permitted"),
        ([{"method": "dola"}], "decoding", "valid dictionary"),
    ],
)
def test_parse_errors_name_the_parameter(raw: object, param: str, match: str) -> None:
    with pytest.raises(SpecError, match=match) as ei:
        parse_decoding(raw)
    assert ei.value.param == param


def test_param_prefix_is_configurable() -> None:
    with pytest.raises(SpecError) as ei:
        resolve_decoding(
            DecodingSpec(method="dola", premature_layers=[99]), 30, tie_word_embeddings=True, param="body.decoding"
        )
    assert ei.value.param == "body.decoding.premature_layers"
