"""steering/errors.py: the one loc -> param formatting and the one layer-list check."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, TypeAdapter, ValidationError

from steering.errors import DecodingError, SpecError, check_layers, field_path


class _Op(BaseModel):
    layers: list[int] | str


def _loc(raw: object) -> tuple[object, ...]:
    with pytest.raises(ValidationError) as e:
        TypeAdapter(list[_Op]).validate_python(raw)
    return max((err["loc"] for err in e.value.errors()), key=len)


@pytest.mark.parametrize(
    ("loc", "prefix", "path"),
    [
        (("steering", 0, "layers"), "", "steering[0].layers"),
        ((0, "layers"), "steering", "steering[0].layers"),
        (("premature_layers", "list[int]", 1), "decoding", "decoding.premature_layers[1]"),
        (("gate", "function-after[_check(), ProbeGate]", "below"), "", "gate.below"),
        (("probe", "layer"), "", "probe.layer"),
        (("x", "str"), "", "x"),
        ((), "data", "data"),
        ((), "", ""),
    ],
)
def test_field_path(loc: tuple[object, ...], prefix: str, path: str) -> None:
    assert field_path(loc, prefix) == path


def test_field_path_drops_pydantic_union_labels_of_a_real_error() -> None:
    loc = _loc([{"layers": [1, "x"]}])
    assert any(isinstance(p, str) and "[" in p for p in loc)  # pydantic does label the union member
    assert field_path(loc, "steering") == "steering[0].layers[1]"


@pytest.mark.parametrize(
    ("layers", "message"),
    [([], "layers must not be empty"), ([1, 1], r"layers \[1, 1\] contain duplicates"),
     ([3, 4, -1], r"layers \[4, -1\] outside the model's \[0, 4\)")],
)
def test_check_layers_refuses(layers: list[int], message: str) -> None:
    with pytest.raises(SpecError, match=message) as e:
        check_layers(layers, 4, "steering[2].layers")
    assert e.value.param == "steering[2].layers" and type(e.value) is SpecError


def test_check_layers_words_and_types_the_error_as_asked() -> None:
    assert check_layers([0, 3], 4, "p") == (0, 3)
    with pytest.raises(DecodingError, match=r"^premature_layers \[9\] outside \[0, 4\) \(note\)$") as e:
        check_layers([9], 4, "decoding.premature_layers", "premature_layers", DecodingError, where="", note=" (note)")
    assert e.value.code == "invalid_decoding"
