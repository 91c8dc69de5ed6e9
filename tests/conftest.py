from __future__ import annotations

import os

import pytest

# helpers' asserts (tests/support) report their values as a test module's do
pytest.register_assert_rewrite("tests.support")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
