"""``truthsteer directions push FILE`` / ``delete NAME``: change a running server's live registry.

Thin HTTP client (httpx) over ``POST /v1/directions`` and ``DELETE /v1/directions/{name}``; the
server validates the file exactly as at start-up. Exit status 0 on success, 1 with the server's
error message otherwise.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from pathlib import Path
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8000"


def _headers(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def _report(r: Any) -> int:
    if r.status_code >= 400:
        try:
            err = r.json().get("error", {})
            msg = f"{err.get('message')} (param {err.get('param')}, code {err.get('code')})"
        except ValueError:
            msg = r.text
        print(f"error {r.status_code}: {msg}", file=sys.stderr)
        return 1
    print(json.dumps(r.json()))
    return 0


def push(args: argparse.Namespace) -> int:
    import httpx

    body: dict[str, Any] = {"data": base64.b64encode(Path(args.file).read_bytes()).decode(), "replace": args.replace}
    if args.name:
        body["name"] = args.name
    r = httpx.post(f"{args.url.rstrip('/')}/v1/directions", json=body, headers=_headers(args.key), timeout=60)
    return _report(r)


def delete(args: argparse.Namespace) -> int:
    import httpx

    r = httpx.delete(f"{args.url.rstrip('/')}/v1/directions/{args.name}", headers=_headers(args.key), timeout=60)
    return _report(r)


def add_parsers(dsub: Any) -> None:
    """``push`` and ``delete`` under ``truthsteer directions``."""
    key_help = "admin API key (default: $TRUTHSTEER_ADMIN_KEY)"
    p = dsub.add_parser("push", help="register a bundle (.safetensors) or control vector (.gguf) on a running server")
    p.add_argument("file")
    p.add_argument("--url", default=DEFAULT_URL)
    p.add_argument("--key", default=os.environ.get("TRUTHSTEER_ADMIN_KEY"), help=key_help)
    p.add_argument("--name", default=None, help="required for GGUF; checked against a bundle's own name")
    p.add_argument("--replace", action="store_true", help="swap a registered direction of the same name")
    p.set_defaults(func=push)
    d = dsub.add_parser("delete", help="remove a registered direction from a running server")
    d.add_argument("name")
    d.add_argument("--url", default=DEFAULT_URL)
    d.add_argument("--key", default=os.environ.get("TRUTHSTEER_ADMIN_KEY"), help=key_help)
    d.set_defaults(func=delete)
