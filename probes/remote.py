"""Activation extraction through a running server's ``POST /v1/activations``.

:class:`ServerExtractor` stands in for the HF model of :mod:`probes.extract`: the same texts are
tokenized here exactly as the local path does (no special tokens) and sent as token ids, and the
server returns the residual stream after every decoder layer at the last token, read by the
serving engine in its own compiled pass (the activations the server steers and probes). The
result has the local path's shape, ``[len(texts), num_layers, hidden]`` float32; values agree with
HF's to float32 rounding (the integration test measures the gap).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


class ServerExtractor:
    def __init__(self, url: str, key: str | None, num_layers: int, model: str | None = None,
                 client: Any = None) -> None:
        import httpx

        self.url = url.rstrip("/")
        self.num_layers = num_layers
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = client or httpx.Client(headers=headers, timeout=600)
        self.model = model or self._served_model()

    def _served_model(self) -> str:
        r = self.client.get(f"{self.url}/v1/models")
        r.raise_for_status()
        return str(r.json()["data"][0]["id"])

    def last_token(self, tok: Any, texts: Sequence[str], batch_size: int = 16) -> torch.Tensor:
        """``[len(texts), num_layers, hidden]`` at each text's last token."""
        ids = [list(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
        rows: list[np.ndarray] = []
        layers = list(range(self.num_layers))
        for start in range(0, len(ids), batch_size):
            body = {"model": self.model, "input": ids[start:start + batch_size], "layers": layers,
                    "positions": "last"}
            r = self.client.post(f"{self.url}/v1/activations", json=body)
            if r.status_code >= 400:
                raise RuntimeError(f"{self.url}/v1/activations: {r.status_code} {r.text[:500]}")
            for item in r.json()["data"]:
                per_layer = []
                for k in layers:
                    a = item["layers"][str(k)]
                    dt = "<f4" if a["dtype"] == "float32" else "<f2"
                    per_layer.append(np.frombuffer(base64.b64decode(a["data"]), dt).reshape(a["shape"])[0])
                rows.append(np.stack(per_layer).astype(np.float32))
        return torch.from_numpy(np.stack(rows))


def server_extractor(folder: Any, url: str, key: str | None, num_layers: int) -> tuple[ServerExtractor, Any]:
    """The extractor of a running server that serves the model in ``folder``, and that model's
    tokenizer (the texts are tokenized here, as the local path does)."""
    from transformers import AutoTokenizer

    return ServerExtractor(url, key, num_layers), AutoTokenizer.from_pretrained(str(folder))
