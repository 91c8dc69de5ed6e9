// Inline SVG pictures: the model's layers with each layer's probe AUROC, per-token score traces,
// ROC curves. Each SVG has a <title> and <desc> as its text alternative.

const NS = "http://www.w3.org/2000/svg";
export const PROBE_COLOURS = ["#1f5fa8", "#b2182b", "#1b7837", "#762a83", "#8c510a"];

export function el(name, attrs = {}, parent = null) {
  const node = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (parent) parent.appendChild(node);
  return node;
}

function svgRoot(width, height, title, desc) {
  const svg = el("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", class: "plot" });
  el("title", {}, svg).textContent = title;
  el("desc", {}, svg).textContent = desc;
  return svg;
}

/** Bars of per-layer AUROC (0.5 .. 1 scale); ``selected`` layers filled, recommended ones marked.
 *  ``onPick(layer, extend)`` is called on click (extend = shift held). */
export function layerPicture(card, selected, onPick) {
  const stats = card.layer_stats || {};
  const n = Math.max(...card.layers, ...(card.probe_layer != null ? [card.probe_layer] : [])) + 1;
  const W = 16 * n + 20, H = 90;
  const sel = new Set(selected || card.recommended_layers);
  const svg = svgRoot(W, H, `Layers of ${card.name}`,
    `Probe AUROC per layer; steered layers: ${[...sel].join(", ")}; probe read at layer ${card.probe_layer}`);
  for (let k = 0; k < n; k++) {
    const auroc = stats[k]?.auroc;
    const h = auroc == null ? 2 : Math.max(2, (auroc - 0.5) * 2 * 60);
    const x = 10 + 16 * k;
    const bar = el("rect", { x, y: 70 - h, width: 12, height: h,
      class: `layer${sel.has(k) ? " selected" : ""}${card.layers.includes(k) ? "" : " absent"}` }, svg);
    el("title", {}, bar).textContent = `layer ${k}: AUROC ${auroc == null ? "n/a" : auroc.toFixed(3)}`
      + `${sel.has(k) ? " (steered)" : ""}${card.recommended_layers.includes(k) ? " (recommended)" : ""}`;
    bar.addEventListener("click", (ev) => onPick(k, ev.shiftKey));
    if (card.recommended_layers.includes(k)) el("circle", { cx: x + 6, cy: 76, r: 2.5, class: "rec" }, svg);
    if (k === card.probe_layer) el("text", { x: x + 6, y: 12, class: "probe-mark", "text-anchor": "middle" }, svg).textContent = "P";
    if (k % 5 === 0) el("text", { x: x + 6, y: 88, class: "tick", "text-anchor": "middle" }, svg).textContent = String(k);
  }
  return svg;
}

function axes(svg, x0, y0, w, h, xLabel, yLabel) {
  el("line", { x1: x0, y1: y0, x2: x0 + w, y2: y0, class: "axis" }, svg);
  el("line", { x1: x0, y1: y0, x2: x0, y2: y0 - h, class: "axis" }, svg);
  for (const v of [0, 0.5, 1]) {
    el("text", { x: x0 - 4, y: y0 - v * h + 3, class: "tick", "text-anchor": "end" }, svg).textContent = String(v);
    el("line", { x1: x0, y1: y0 - v * h, x2: x0 + w, y2: y0 - v * h, class: "grid" }, svg);
  }
  el("text", { x: x0 + w / 2, y: y0 + 24, class: "label", "text-anchor": "middle" }, svg).textContent = xLabel;
  el("text", { x: 10, y: y0 - h / 2, class: "label", "text-anchor": "middle",
    transform: `rotate(-90 10 ${y0 - h / 2})` }, svg).textContent = yLabel;
}

/** Per-token score traces: ``series`` = {probe: [score per token]}; ``marks`` = token indices steered. */
export function traceChart(series, marks = []) {
  const names = Object.keys(series);
  const n = Math.max(1, ...names.map((p) => series[p].length));
  const W = 520, H = 170, x0 = 40, y0 = 130, w = W - 60, h = 110;
  const desc = names.map((p) => `${p}: ${series[p].map((v) => (v == null ? "n/a" : v.toFixed(2))).join(", ")}`).join("; ");
  const svg = svgRoot(W, H, "Probe score per generated token", desc || "no scores");
  axes(svg, x0, y0, w, h, "generated token", "score");
  const xs = (i) => x0 + (n === 1 ? w / 2 : (i * w) / (n - 1));
  for (const i of marks) el("rect", { x: xs(i) - 2, y: y0 + 2, width: 4, height: 4, class: "steer-mark" }, svg);
  names.forEach((p, j) => {
    const pts = series[p].map((v, i) => (v == null ? null : `${xs(i).toFixed(1)},${(y0 - v * h).toFixed(1)}`)).filter(Boolean);
    el("polyline", { points: pts.join(" "), fill: "none", stroke: PROBE_COLOURS[j % PROBE_COLOURS.length],
      "stroke-width": 2, class: "trace", "data-probe": p }, svg);
    el("text", { x: x0 + 8 + 110 * j, y: 14, fill: PROBE_COLOURS[j % PROBE_COLOURS.length], class: "label" }, svg)
      .textContent = `— ${p}`;
  });
  return svg;
}

/** ROC curves: ``curves`` = {probe: {fpr: [...], tpr: [...], auc}}. */
export function rocChart(curves) {
  const names = Object.keys(curves);
  const W = 340, H = 300, x0 = 44, y0 = 250, w = 270, h = 220;
  const desc = names.map((p) => `${p}: AUROC ${curves[p].auc.toFixed(4)}`).join("; ");
  const svg = svgRoot(W, H, "ROC curve", desc);
  axes(svg, x0, y0, w, h, "false positive rate", "true positive rate");
  el("line", { x1: x0, y1: y0, x2: x0 + w, y2: y0 - h, class: "grid diag" }, svg);
  names.forEach((p, j) => {
    const c = curves[p];
    const pts = c.fpr.map((f, i) => `${(x0 + f * w).toFixed(1)},${(y0 - c.tpr[i] * h).toFixed(1)}`);
    el("polyline", { points: pts.join(" "), fill: "none", stroke: PROBE_COLOURS[j % PROBE_COLOURS.length],
      "stroke-width": 2, "data-probe": p }, svg);
    el("text", { x: x0 + w - 4, y: y0 - 10 - 16 * j, "text-anchor": "end", class: "label",
      fill: PROBE_COLOURS[j % PROBE_COLOURS.length] }, svg).textContent = `${p} (AUROC ${c.auc.toFixed(3)})`;
  });
  return svg;
}
