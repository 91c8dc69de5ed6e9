"""Exceptions raised by the steering package; each message names the file or field at fault."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

# pydantic's labels for union members and validators inside an error's ``loc`` (not user fields)
_LABEL_PREFIXES = ("function-", "tagged-union", "constrained-")
_SCALAR_LABELS = ("str", "int", "float", "bool")


class TruthsteerError(Exception):
    """Base class of truthsteer errors."""


class BundleError(TruthsteerError, ValueError):
    """A direction bundle is malformed or does not fit the model."""


class ModelError(TruthsteerError, ValueError):
    """A model cannot be located, prepared or described."""


class SpecError(TruthsteerError, ValueError):
    """A per-request steering spec is invalid; ``param`` names the offending field."""

    code = "invalid_steering"  # the API's error code

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class DecodingError(SpecError):
    """A per-request ``decoding`` spec is invalid (the API answers ``invalid_decoding``)."""

    code = "invalid_decoding"


def field_path(loc: Iterable[Any], prefix: str = "") -> str:
    """A pydantic error location as the path a user writes: ``steering[0].layers``.

    List indices become ``[i]``, names are joined with dots after ``prefix``, and pydantic's
    union-member and validator labels (``list[int]``, ``function-after[...]``, ``str``) are dropped.
    The one place the API, the bundle loader and the spec parsers turn a ``loc`` into a ``param``.
    """
    out = prefix
    for p in loc:
        if isinstance(p, int):
            out += f"[{p}]"
        elif p.startswith(_LABEL_PREFIXES) or any(c in p for c in "[]'") or p in _SCALAR_LABELS:
            continue
        else:
            out += f".{p}" if out else str(p)
    return out


def check_layers(layers: Sequence[int], num_layers: int, param: str, what: str = "layers",
                 error: type[SpecError] = SpecError, where: str = "the model's ", note: str = "") -> tuple[int, ...]:
    """The checks every user-given layer list gets (steering ops, premature layers): not empty, no
    duplicates, inside ``[0, num_layers)``; raises ``error`` naming ``param`` (``where`` and
    ``note`` word the range in the message)."""
    if not layers:
        raise error(f"{what} must not be empty", param)
    if len(set(layers)) != len(layers):
        raise error(f"{what} {list(layers)} contain duplicates", param)
    bad = [x for x in layers if not 0 <= x < num_layers]
    if bad:
        raise error(f"{what} {bad} outside {where}[0, {num_layers}){note}", param)
    return tuple(layers)
