"""The CLI end to end, in vLLM's in-process mode (the fixtures use the default multiprocess mode)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

pytestmark = pytest.mark.engine


def test_cli_generate_in_process_matches_the_multiprocess_engine(steered: Any) -> None:
    from vllm import SamplingParams

    prompt = "The city of Rome is located in"
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "server.cli.main", "generate", "--max-tokens", "12", "--steer", "truth:+6", prompt]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("{")][-1]
    got = json.loads(line)
    params = SamplingParams(temperature=0.0, max_tokens=12, seed=0)
    steered_out, plain_out = steered.generate(
        [prompt, prompt], params, steering=[[{"direction": "truth", "strength": 6.0}], None]
    )
    assert got["text"] == steered_out.outputs[0].text
    assert got["text"] != plain_out.outputs[0].text


def test_cli_reports_bad_steering_clearly_before_starting_an_engine() -> None:
    cmd = [sys.executable, "-m", "server.cli.main", "generate", "--steer", "truth+4", "x"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2
    assert "cannot parse steering shorthand 'truth+4'" in proc.stderr
    assert "Initializing a V1 LLM engine" not in proc.stderr
