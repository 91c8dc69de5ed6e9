"""Exceptions raised by the steering package; each message names the file or field at fault."""

from __future__ import annotations


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
