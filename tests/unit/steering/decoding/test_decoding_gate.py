"""Probe-gated contrastive decoding on the vLLM-shaped toy model, in the plugin's step order:
planner.plan -> runtime.prepare_step(plan), stash.prepare(plan) -> forward ->
runtime.finish_step(plan) (the plan decides its gates) -> logits processor. The gate reads the
probe at the decoded position in the same pass."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate

from steering.decoding.contrastive import apply_contrast
from steering.decoding.logits_processor import ContrastiveLogitsProcessor
from steering.decoding.spec import ResolvedDecoding, parse_decoding, resolve_decoding
from steering.decoding.stash import HiddenStash
from steering.errors import SpecError
from steering.request import DECODING, EXTRA_ARGS_KEY
from steering.spec import ResolvedGate, ResolvedOp, wire
from steering.vllm.probe_channel import CONTRASTED, STEERED, StepMessage
from steering.vllm.probe_readout import folded_probe
from steering.vllm.runtime import SteeringRuntime
from tests.support.tiny import make_bundle
from tests.support.toy import H, L, Req, ToyModel, fake_runner

pytestmark = pytest.mark.usefixtures("ops_mode")  # both modes of the ops (tests/unit/conftest.py)

V = 13
TRUTH = make_bundle("truth", seed=3)  # probe at layer 0
DOLA = ResolvedDecoding("dola", (1, 3), alpha=0.05)


@pytest.fixture(autouse=True)
def _inference() -> Any:
    with torch.inference_mode():
        yield


def gated(below: float, window: int = 1, hold: int = 0) -> ResolvedDecoding:
    return ResolvedDecoding("dola", (1, 3), alpha=0.05, gate=ResolvedGate("truth", below, None, window, hold))


class Capture:
    def __init__(self) -> None:
        self.msgs: list[StepMessage] = []

    def send(self, msg: StepMessage) -> None:
        self.msgs.append(msg)


class Engine:
    """Toy model + runtime + stash + logits processor, stepped like the plugin does."""

    def __init__(self) -> None:
        self.model = ToyModel()
        self.rt = SteeringRuntime(self.model.layers, [TRUTH], hidden_size=H, max_tokens=32, max_ops_per_layer=2,
                                  device=torch.device("cpu"), dtype=torch.float32)
        self.sent = Capture()
        self.rt.sender = self.sent  # type: ignore[assignment]
        self.stash = HiddenStash(self.model.layers, H, max_reqs=4, device=torch.device("cpu"), dtype=torch.float32)
        self.rt.planner.decoding = True  # what logits_processor.install does
        g = torch.Generator().manual_seed(11)
        self.w = torch.randn(V, H, generator=g)
        cfg: Any = type("C", (), {"model_config": type("M", (), {"hf_text_config": type("T", (), {
            "num_hidden_layers": L})})})
        self.lp = ContrastiveLogitsProcessor(cfg, torch.device("cpu"), False)
        self.lp.attach(self.stash, lambda h: h, lambda h: h @ self.w.t())  # type: ignore[arg-type]
        self.added = False

    def step(self, reqs: list[Req], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step; returns (logits before the processor, after) of every request's sampling row."""
        runner = fake_runner(reqs)
        if not self.added:
            added = []
            for i, r in enumerate(reqs):
                extra = (r.extra or {}).get(EXTRA_ARGS_KEY, {})
                added.append((i, SamplingParams(extra_args={EXTRA_ARGS_KEY: extra} if extra else None), [1], []))
            self.lp.update_state(BatchUpdate(len(reqs), [], added, []))
            self.added = True
        plan = self.rt.planner.plan(runner)
        self.rt.prepare_step(plan)
        self.stash.prepare(plan)
        out = self.model(x)
        self.rt.finish_step(plan)
        last = runner.query_start_loc.np[1:] - 1
        logits = out[torch.as_tensor(last, dtype=torch.long)] @ self.w.t()
        before = logits.clone()
        return before, self.lp.apply(logits)


def req(rid: str, t: int, cfg: ResolvedDecoding | None, probes: bool = False,
        steering: list[ResolvedOp] | None = None) -> Req:
    """Request ``rid`` at step ``t``: a 3-token prefill, then one token per step."""
    extra: dict[str, Any] = {}
    if cfg is not None:
        extra[DECODING] = cfg.to_wire()
    if probes:
        extra["probes"] = {"id": f"id-{rid}"}
    if steering:
        extra["steering"] = wire(steering)
    n_sched = 3 if t == 0 else 1
    return Req(rid, 3, 0 if t == 0 else 2 + t, n_sched, extra={EXTRA_ARGS_KEY: extra} if extra else None)


def xs(n: int = 6, seed: int = 5) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(3, H, generator=g)] + [torch.randn(1, H, generator=g) for _ in range(n - 1)]


def truth_score(x: torch.Tensor) -> float:
    """The calibrated truth probe at the last row of ``x`` (layer 0's stream), by plain code."""
    model = ToyModel()
    h, r = model.layers[0](x, None)
    w, b = folded_probe(TRUTH)
    return float(torch.sigmoid((h + r)[-1] @ w + b))


def contrasted(e: Engine, before: torch.Tensor, row: int, cfg: ResolvedDecoding) -> torch.Tensor:
    premature = {k: e.stash.hidden(k, torch.tensor([row])) @ e.w.t() for k in cfg.layers}
    return apply_contrast(before[row : row + 1], premature, [cfg], [[1]])[0]


def run(cfgs: list[ResolvedDecoding | None], steps: list[torch.Tensor], probes: bool = False
        ) -> tuple[Engine, list[list[torch.Tensor]], list[list[torch.Tensor]]]:
    """Requests with ``cfgs`` side by side (same input each) over ``steps``: outputs per step and row."""
    e = Engine()
    befores, afters = [], []
    for t, x in enumerate(steps):
        reqs = [req(f"r{i}", t, c, probes) for i, c in enumerate(cfgs)]
        before, after = e.step(reqs, torch.cat([x] * len(cfgs)))
        befores.append(list(before))
        afters.append(list(after.clone()))
    return e, befores, afters


def test_gate_that_never_fires_is_plain_and_one_that_always_fires_is_ungated_bitwise() -> None:
    steps = xs()
    _, before, after = run([None, DOLA, gated(below=-1.0), gated(below=2.0)], steps)
    for t in range(len(steps)):
        assert torch.equal(after[t][2], before[t][0])  # never fires: the plain row, bit for bit
        assert torch.equal(after[t][3], after[t][1])  # always fires: ungated DoLa, bit for bit
        assert not torch.equal(after[t][1], before[t][1])


def test_each_step_is_contrasted_exactly_when_its_own_score_fires() -> None:
    steps = xs(8)
    scores = [truth_score(x) for x in steps]
    thr = sorted(scores)[4]  # fires on 4 of 8 steps
    e = Engine()
    fired = []
    for t, x in enumerate(steps):
        before, after = e.step([req("p", t, None), req("g", t, gated(below=thr), probes=True)], torch.cat([x, x]))
        assert torch.equal(after[0], before[0])  # the plain neighbour is never touched
        if scores[t] < thr:
            # the same maths as apply_contrast on this row (the processor batches the LM head)
            torch.testing.assert_close(after[1], contrasted(e, before, 1, gated(below=thr)), rtol=0, atol=1e-5)
        else:
            assert torch.equal(after[1], before[1])
        fired.append(scores[t] < thr)
    assert sum(fired) == 4
    # the flags sent with the probe rows say which tokens were contrasted
    flags = [f[-1] for m in e.sent.msgs for pid, _pos, _l, f in m.rows if pid == "id-g"]
    assert flags == [CONTRASTED if f else 0 for f in fired]


def test_window_and_hold_of_a_decoding_gate() -> None:
    steps = xs(8, seed=9)
    scores = [truth_score(x) for x in steps]
    thr = sorted(scores)[1]  # fires on 1 step alone
    e = Engine()
    open_steps = []
    for t, x in enumerate(steps):
        before, after = e.step([req("g", t, gated(below=thr, hold=2))], x)
        open_steps.append(not torch.equal(after[0], before[0]))
    first = scores.index(min(scores))
    expected = [first <= t <= first + 2 for t in range(len(steps))]
    assert open_steps == expected


def test_steering_and_decoding_gates_flag_the_same_row() -> None:
    steps = xs(4)
    gate = ResolvedGate("truth", 2.0, None, 1, 0, "open")  # steering gate: always open
    op = [ResolvedOp("truth", "add", 1.0, (1,), "all", (), gate)]
    e = Engine()
    for t, x in enumerate(steps):
        e.step([req("g", t, gated(below=2.0), probes=True, steering=op)], x)
    flags = [f[-1] for m in e.sent.msgs for _pid, _pos, _l, f in m.rows]
    assert flags == [STEERED | CONTRASTED] * len(steps)


def test_gate_with_an_unloaded_probe_decodes_plainly_and_is_counted() -> None:
    e = Engine()
    bad = ResolvedDecoding("dola", (1, 3), gate=ResolvedGate("nope", 0.5, None))
    before, after = e.step([req("g", 0, bad)], xs(1)[0])
    assert torch.equal(after, before) and e.stash.rejected == 1


# ------------------------------------------------------------------------------------------ the spec
def test_decoding_gate_spec_resolves_round_trips_and_names_bad_fields() -> None:
    bundles = {"truth": TRUTH, "plain": make_bundle("plain", probe=False)}
    spec = parse_decoding({"method": "dola", "gate": {"probe": "truth", "below": 0.4, "window": 2, "hold": 3}})
    cfg = resolve_decoding(spec, L, tie_word_embeddings=False, bundles=bundles)
    assert cfg.gate == ResolvedGate("truth", 0.4, None, 2, 3, "closed")
    assert ResolvedDecoding.from_wire(cfg.to_wire()) == cfg
    assert "gate" not in DOLA.to_wire()  # ungated configs keep their wire form
    cases = [
        ({"method": "dola", "gate": {"probe": "plain", "below": 0.4}}, "decoding.gate.probe"),
        ({"method": "none", "gate": {"probe": "truth", "below": 0.4}}, "decoding.gate"),
    ]
    for raw, param in cases:
        with pytest.raises(SpecError) as e:
            resolve_decoding(parse_decoding(raw), L, tie_word_embeddings=False, bundles=bundles)
        assert e.value.param == param
    for raw, param in [({"method": "dola", "gate": {"probe": "truth", "below": 0.4, "initial": "open"}},
                        "decoding.gate.initial"),
                       ({"method": "dola", "gate": {"probe": "truth"}}, "decoding.gate"),
                       ({"method": "dola", "gate": {"probe": "truth", "below": math.inf}}, "decoding.gate.below")]:
        with pytest.raises(SpecError) as e:
            parse_decoding(raw)
        assert e.value.param == param, raw
