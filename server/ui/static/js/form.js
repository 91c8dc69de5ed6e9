// The configuration form: prompt, model parameters, steering operations (with the layer picture),
// probes, contrastive decoding and abstention. readForm() / fillForm() convert to and from the
// state object of state.js.
import { layerPicture } from "./plots.js";
import { formatLayers, formatSteer, layerList, parseLayers, parseSteer } from "./shorthand.js";

const $ = (id) => document.getElementById(id);
let cards = {};
let carriedMessages = null; // chat messages from a link, kept until the prompt is edited

function option(value, text, selected) {
  return Object.assign(document.createElement("option"), { value, textContent: text ?? value, selected: !!selected });
}

function field(label, control) {
  const l = document.createElement("label");
  l.append(Object.assign(document.createElement("span"), { textContent: label }), control);
  return l;
}

function input(attrs) {
  return Object.assign(document.createElement("input"), attrs);
}

function probeNames() {
  return Object.values(cards).filter((c) => c.probe_layer != null).map((c) => c.name);
}

/** One steering operation's controls. */
function opRow(op) {
  const box = document.createElement("fieldset");
  box.className = "op";
  box.appendChild(Object.assign(document.createElement("legend"), { textContent: "Steering operation" }));
  const dir = document.createElement("select");
  for (const name of Object.keys(cards)) dir.appendChild(option(name, name, name === op.direction));
  const kind = document.createElement("select");
  for (const k of ["add", "ablate", "clamp"]) kind.appendChild(option(k, k, k === (op.op || "add")));
  const strength = input({ type: "range", min: -16, max: 16, step: 0.5, className: "strength" });
  const out = document.createElement("output");
  const layers = input({ type: "text", className: "layers", size: 9 });
  const positions = document.createElement("select");
  for (const p of ["all", "prompt", "generated"]) positions.appendChild(option(p, p, p === (op.positions || "all")));
  const gateOn = input({ type: "checkbox", className: "gate-on", checked: !!op.gate });
  const gateProbe = document.createElement("select");
  for (const p of probeNames()) gateProbe.appendChild(option(p, p, p === op.gate?.probe));
  const gateBelow = input({ type: "number", step: 0.05, min: 0, max: 1, value: op.gate?.below ?? 0.35, className: "gate-below" });
  const gateHold = input({ type: "number", step: 1, min: 0, value: op.gate?.hold ?? 0, className: "gate-hold" });
  const picture = document.createElement("div");
  picture.className = "layer-picture";
  const remove = Object.assign(document.createElement("button"), { type: "button", textContent: "Remove" });
  const card = () => cards[dir.value];
  const defaultStrength = () => (kind.value === "add" ? card()?.recommended_strength ?? 1 : 1);
  strength.value = String(op.strength ?? defaultStrength());
  layers.value = formatLayers(layerList(op.layers));
  const draw = () => {
    out.value = strength.value;
    const c = card();
    if (!c) return;
    layers.placeholder = `recommended ${formatLayers(c.recommended_layers)}`;
    let sel = null;
    try { sel = parseLayers(layers.value); layers.setCustomValidity(""); } catch (e) { layers.setCustomValidity(e.message); }
    picture.replaceChildren(layerPicture(c, sel, (k, extend) => {
      const cur = parseLayers(layers.value) || [];
      const lo = extend && cur.length ? Math.min(cur[0], k) : k;
      const hi = extend && cur.length ? Math.max(cur[cur.length - 1], k) : k;
      layers.value = formatLayers(Array.from({ length: hi - lo + 1 }, (_, i) => lo + i));
      draw();
    }));
  };
  for (const c of [strength, layers, dir]) c.addEventListener("input", draw);
  dir.addEventListener("change", draw);
  remove.addEventListener("click", () => box.remove());
  strength.setAttribute("aria-label", "strength");
  const gate = document.createElement("div");
  gate.className = "gate";
  gate.append(field("gate", gateOn), field("gate probe", gateProbe), field("below", gateBelow), field("hold", gateHold));
  const slider = document.createElement("span");
  slider.className = "slider";
  slider.append(strength, out);
  box.append(field("direction", dir), field("op", kind), field("strength", slider),
    field("layers", layers), picture, field("positions", positions), gate, remove);
  box.readOp = () => {
    const o = { direction: dir.value, op: kind.value };
    if (kind.value === "add" || Number(strength.value) !== 1) o.strength = Number(strength.value);
    const l = parseLayers(layers.value);
    if (l) o.layers = l;
    if (positions.value !== "all") o.positions = positions.value;
    if (gateOn.checked) o.gate = { probe: gateProbe.value, below: Number(gateBelow.value), hold: Number(gateHold.value) };
    if (op.target !== undefined && kind.value === "clamp") o.target = op.target;
    return o;
  };
  draw();
  return box;
}

function setOps(ops) {
  $("ops").replaceChildren(...ops.filter((o) => cards[o.direction]).map(opRow));
}

/** Build the probe checkboxes and recommended-steering buttons from GET /v1/directions. */
export function initForm(directionCards) {
  cards = Object.fromEntries(directionCards.map((c) => [c.name, c]));
  const probes = $("probes");
  const abstainProbe = $("abstain-probe");
  for (const p of probeNames()) {
    const box = input({ type: "checkbox", value: p, checked: true, name: "probe" });
    probes.appendChild(field(p, box));
    abstainProbe.appendChild(option(p));
  }
  const rec = $("recommended");
  for (const c of directionCards) {
    if (!Array.isArray(c.recommended_steering) || !c.recommended_steering.length) continue;
    const b = Object.assign(document.createElement("button"), { type: "button", textContent: `Recommended ${c.name} steering` });
    b.title = c.recommended_steering.map(formatSteer).join(" ");
    b.addEventListener("click", () => setOps(c.recommended_steering));
    rec.appendChild(b);
  }
  $("add-op").addEventListener("click", () => {
    const name = Object.keys(cards)[0];
    if (name) $("ops").appendChild(opRow({ direction: name, op: "add" }));
  });
  $("prompt").addEventListener("input", () => { carriedMessages = null; $("messages-note").hidden = true; });
}

/** Steering ops from a text of shorthand items separated by spaces (compare tab, config B). */
export function parseSteerList(text) {
  return text.trim() ? text.trim().split(/\s+/).map(parseSteer) : [];
}

function numberOr(id, fallback) {
  const v = $(id).value.trim();
  return v === "" ? fallback : Number(v);
}

export function readForm(base) {
  const s = { ...base };
  s.mode = $("mode").value;
  s.prompt = $("prompt").value;
  s.messages = s.mode === "chat" ? carriedMessages : null;
  s.max_tokens = numberOr("max_tokens", 32);
  s.temperature = numberOr("temperature", 0);
  s.seed = numberOr("seed", null);
  const checked = [...document.querySelectorAll("#probes input:checked")].map((b) => b.value);
  const kept = (base.probes || []).filter((p) => checked.includes(p)); // the link's order first
  s.probes = [...kept, ...checked.filter((p) => !kept.includes(p))];
  s.steer = [...$("ops").children].map((row) => row.readOp());
  s.steer_b = parseSteerList($("steer-b").value);
  const method = $("decoding-method").value;
  s.decoding = null;
  if (method !== "none") {
    const pl = $("decoding-layers").value.trim();
    s.decoding = base.decoding?.method === method ? { ...base.decoding, method } : { method };
    delete s.decoding.premature_layers;
    if (pl) s.decoding.premature_layers = /^(low|high)$/.test(pl) ? pl : pl.split(",").map(Number);
    const alpha = $("decoding-alpha").value.trim();
    if (alpha !== "" && Number(alpha) !== 0.1) s.decoding.alpha = Number(alpha);
  }
  s.abstain = $("abstain-on").checked
    ? { ...(base.abstain || {}), probe: $("abstain-probe").value, below: Number($("abstain-below").value), reduce: $("abstain-reduce").value }
    : null;
  s.statements = $("statements").value;
  return s;
}

export function fillForm(s) {
  $("mode").value = s.mode;
  carriedMessages = s.messages;
  $("messages-note").hidden = !s.messages;
  $("prompt").value = s.messages ? s.messages.filter((m) => m.role === "user").map((m) => m.content).pop() ?? "" : s.prompt;
  $("max_tokens").value = String(s.max_tokens);
  $("temperature").value = String(s.temperature);
  $("seed").value = s.seed === null ? "" : String(s.seed);
  if (s.probes !== null) {
    for (const b of document.querySelectorAll("#probes input")) b.checked = s.probes.includes(b.value);
  }
  setOps(s.steer);
  $("steer-b").value = s.steer_b.map(formatSteer).join(" ");
  $("decoding-method").value = s.decoding?.method ?? "none";
  const pl = s.decoding?.premature_layers;
  $("decoding-layers").value = pl === undefined ? "" : Array.isArray(pl) ? pl.join(",") : pl;
  $("decoding-alpha").value = String(s.decoding?.alpha ?? 0.1);
  $("abstain-on").checked = !!s.abstain;
  if (s.abstain) {
    $("abstain-probe").value = s.abstain.probe;
    $("abstain-below").value = String(s.abstain.below);
    $("abstain-reduce").value = s.abstain.reduce || "mean";
  }
  $("statements").value = s.statements;
}
