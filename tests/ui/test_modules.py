"""The page's pure modules in headless Chromium, without an engine: the steering shorthand parses
exactly as the CLI's parser does, and the score tab's ROC area equals scikit-learn's, ties included."""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest

from server.ui import STATIC
from steering.errors import TruthsteerError
from steering.llm import parse_shorthand
from steering.spec import SteeringOp


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def static_server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(STATIC)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def page(browser: Any) -> Iterator[Any]:
    with static_server() as base:
        browser.get(f"{base}/index.html")  # no API here: the page says so; the modules still load
        yield browser


def call(driver: Any, module: str, expr: str, *args: Any) -> Any:
    """Evaluate ``expr`` (with ``m`` = the module, ``args``) in the page; errors come back as {"error"}."""
    script = f"""const done = arguments[arguments.length - 1]; const args = Array.from(arguments).slice(0, -1);
    import('./js/{module}').then((m) => {{ try {{ done({{ value: {expr} }}); }} catch (e) {{ done({{ error: e.message }}); }} }},
      (e) => done({{ error: 'import: ' + e.message }}));"""
    return driver.execute_async_script(script, *args)


SHORTHANDS = ["truth:+4", "truth:-2@10-14", "truth:+0.5@12", "truth:ablate", "sycophancy:clamp@3-5", "truth:+1e-2",
              "my.dir_2:-3", "truth:4", "truth:+x", "truth:add", ":+1", "truth:+2@14-"]


@pytest.mark.parametrize("text", SHORTHANDS)
def test_steer_shorthand_parses_like_the_cli(page: Any, text: str) -> None:
    got = call(page, "shorthand.js", "m.parseSteer(args[0])", text)
    try:
        expected = parse_shorthand(text)
    except TruthsteerError:
        assert "error" in got, got
        return
    assert "error" not in got, got
    assert SteeringOp(**got["value"]).model_dump() == expected.model_dump()
    again = call(page, "shorthand.js", "m.parseSteer(m.formatSteer(m.parseSteer(args[0])))", text)
    assert again["value"] == got["value"]


def test_operations_beyond_the_shorthand_round_trip_as_json(page: Any) -> None:
    ops = [{"direction": "truth", "op": "add", "strength": 4, "positions": "generated"},
           {"direction": "truth", "op": "add", "strength": 2, "layers": [3, 5]},
           {"direction": "truth", "op": "ablate", "strength": 0.5},
           {"direction": "truth", "op": "add", "strength": 6, "gate": {"probe": "truth", "below": 0.35}}]
    for op in ops:
        out = call(page, "shorthand.js", "[m.formatSteer(args[0]), m.parseSteer(m.formatSteer(args[0]))]", op)["value"]
        assert out[0].startswith("{") and out[1] == op


def test_roc_area_equals_scikit_learn_with_ties(page: Any) -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    for trial in range(20):
        n = int(rng.integers(4, 40))
        labels = [int(x) for x in rng.integers(0, 2, n)]
        labels[0], labels[1] = 0, 1
        scores = [float(x) for x in rng.choice(np.linspace(0, 1, 5 if trial % 2 else 1000), n)]  # ties on odd trials
        got = call(page, "score.js", "m.roc(args[0], args[1]).auc", labels, scores)["value"]
        assert got == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_statement_lines_with_and_without_labels(page: Any) -> None:
    text = "Paris is in France.,1\nA, B and C,0\n\nno label here\nLyon is in Japan. , false"
    got = call(page, "score.js", "m.parseStatements(args[0])", text)["value"]
    assert got == [{"text": "Paris is in France.", "label": 1}, {"text": "A, B and C", "label": 0},
                   {"text": "no label here", "label": None}, {"text": "Lyon is in Japan.", "label": 0}]


def test_url_state_round_trips(page: Any) -> None:
    query = ("tab=compare&mode=completion&prompt=The+city+of+Paris&max_tokens=12&temperature=0.5&seed=3"
             "&probes=truth&steer=truth%3A%2B2%4014-18&steer=sycophancy%3Aablate&steer_b=truth%3A-2"
             "&decoding=dola%3Ahigh&abstain=truth%3A0.3%3Amin")
    got = call(page, "state.js", "m.writeState(m.readState(args[0]))", query)["value"]
    assert got == query
    body = call(page, "state.js", "m.requestBody(m.readState(args[0]), m.readState(args[0]).steer)", query)["value"]
    assert body["prompt"] == "The city of Paris" and body["logprobs"] == 0
    assert body["steering"] == [{"direction": "truth", "op": "add", "strength": 2, "layers": [14, 15, 16, 17, 18]},
                                {"direction": "sycophancy", "op": "ablate"}]
    assert body["decoding"] == {"method": "dola", "premature_layers": "high"}
    assert body["abstain"] == {"probe": "truth", "below": 0.3, "reduce": "min"}


@pytest.mark.parametrize("module", sorted(p.name for p in (STATIC / "js").glob("*.js") if p.name != "main.js"))
def test_every_module_loads(page: Any, module: str) -> None:
    got = call(page, module, "Object.keys(m).length")
    assert "error" not in got and got["value"] > 0, got


def test_token_colours_keep_dark_text_readable(page: Any) -> None:
    """WCAG contrast of #111 text on every colour of the scale, both orientations: at least 7:1."""
    colours = call(page, "tokens.js", "[0, 0.1, 0.25, 0.4, 0.5, 0.6, 0.75, 0.9, 1].flatMap((v) => [m.colour(v), m.colour(v, true)])")
    def lum(rgb: list[float]) -> float:
        lin = [c / 255 / 12.92 if c / 255 <= 0.03928 else ((c / 255 + 0.055) / 1.055) ** 2.4 for c in rgb]
        return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]
    text = lum([17, 17, 17])
    for c in colours["value"]:
        rgb = [float(x) for x in c[c.index("(") + 1:-1].split(",")]
        assert (lum(rgb) + 0.05) / (text + 0.05) >= 7, c


def test_recommended_steering_button_loads_the_bundle_s_operations(page: Any) -> None:
    card = {"name": "truth", "kind": "truth", "layers": list(range(30)), "recommended_layers": [16, 17, 18],
            "recommended_strength": 1.0, "probe_layer": 17, "layer_stats": {"17": {"auroc": 0.8}},
            "recommended_steering": [{"direction": "truth", "op": "add", "strength": 3, "layers": {"start": 12, "end": 15}}]}
    bare = {**card, "name": "other", "recommended_steering": []}
    got = call(page, "form.js", """(() => { m.initForm(args[0]);
      const buttons = [...document.querySelectorAll('#recommended button')];
      buttons[0].click();
      return [buttons.map((b) => b.textContent), m.readForm({probes: null, decoding: null, abstain: null}).steer]; })()""",
               [card, bare])
    assert "error" not in got, got
    names, steer = got["value"]
    assert names == ["Recommended truth steering"]  # none for an empty list
    assert steer == [{"direction": "truth", "op": "add", "strength": 3, "layers": [12, 13, 14]}]
