"""Per-question score cache for evaluations through the API, keyed by what each question is sent.

A question's scores depend only on the model, the prompt format and the request fields it is
scored under, so one file holds the scores of one (model, format, fields) triple, by the
question's index in the data file. Two configurations that send a fold the same fields share its
scores (e.g. a fixed-K ITI recipe whose K equals the auto-K choice), and growing a sample (150
questions per fold to all 817) computes only the questions not scored yet; a run stopped midway
keeps what it wrote.

Invariant: a value is returned only for the exact (model, format, fields, question) it was
computed under (the key is the canonical JSON of the triple, stored in the file and checked on
read, so a hash collision or a hand-edited file cannot mix scores).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Scores = dict[int, dict[str, float]]  # question index -> metric -> value


@dataclass(frozen=True)
class ScoreCache:
    folder: Path
    model: str
    fmt: str

    def _key(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        return {"model": self.model, "format": self.fmt, "fields": dict(fields)}

    def path(self, fields: Mapping[str, Any]) -> Path:
        digest = hashlib.sha256(json.dumps(self._key(fields), sort_keys=True).encode()).hexdigest()[:16]
        return self.folder / f"{digest}.json"

    def get(self, fields: Mapping[str, Any]) -> Scores:
        """Every cached question's scores under ``fields`` (empty when none)."""
        path = self.path(fields)
        if not path.exists():
            return {}
        stored = json.loads(path.read_text())
        if stored.get("key") != json.loads(json.dumps(self._key(fields))):
            raise ValueError(f"{path}: stored for {stored.get('key')}, not for {self._key(fields)}")
        return {int(q): dict(v) for q, v in stored["scores"].items()}

    def put(self, fields: Mapping[str, Any], new: Mapping[int, Mapping[str, float]]) -> Scores:
        """Merge ``new`` into the cached scores under ``fields`` (atomically) and return them all."""
        merged = self.get(fields) | {int(q): dict(v) for q, v in new.items()}
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.path(fields)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"key": self._key(fields),
                                   "scores": {str(q): merged[q] for q in sorted(merged)}}))
        tmp.replace(path)
        return merged
