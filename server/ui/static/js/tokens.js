// One element per generated token, coloured by a probe's score, with the contract for tests and
// tools: data-token-index (0-based), data-score-<probe> (the API's exact number, "null" when the
// API sent none), data-steered / data-contrasted ("true" | "false" | "unknown").
// The colour scale runs through light tints only, so dark text keeps a contrast above 7:1;
// steered tokens are also underlined and contrasted ones overlined (not colour alone), and
// "Scores as text" lists every value.

const LOW = [244, 165, 130], MID = [247, 247, 247], HIGH = [146, 197, 222];

/** Background of a score; ``risky`` probes (high = risk, e.g. sycophancy) use the scale reversed,
 *  so that blue always reads as reassuring and orange as risky. */
export function colour(score, risky = false) {
  if (score == null || !Number.isFinite(score)) return "transparent";
  const c = Math.min(1, Math.max(0, score));
  const t = risky ? 1 - c : c;
  const [a, b, u] = t < 0.5 ? [LOW, MID, t * 2] : [MID, HIGH, (t - 0.5) * 2];
  return `rgb(${a.map((c, i) => Math.round(c + (b[i] - c) * u)).join(",")})`;
}

function flagText(v) {
  return v === true ? "true" : v === false ? "false" : "unknown";
}

/** A token element; ``scores`` = {probe: score}. */
export function tokenElement(index, text, scores, steered, contrasted, colourProbe, risky) {
  const span = document.createElement("span");
  span.className = "tok";
  span.textContent = text;
  span.dataset.tokenIndex = String(index);
  for (const [p, v] of Object.entries(scores)) span.setAttribute(`data-score-${p}`, v == null ? "null" : String(v));
  span.dataset.steered = flagText(steered);
  span.dataset.contrasted = flagText(contrasted);
  span.tabIndex = index === 0 ? 0 : -1;
  const raw = colourProbe ? span.getAttribute(`data-score-${colourProbe}`) : null;
  span.style.backgroundColor = colour(raw == null || raw === "null" ? null : Number(raw), risky);
  return span;
}

/** Tooltip text of a token element: every probe's exact score and its flags. */
export function describe(span) {
  const lines = [`token ${span.dataset.tokenIndex}: ${JSON.stringify(span.textContent)}`];
  for (const a of span.attributes) {
    if (a.name.startsWith("data-score-")) lines.push(`${a.name.slice(11)}: ${a.value}`);
  }
  lines.push(`steered: ${span.dataset.steered}`, `contrasted: ${span.dataset.contrasted}`);
  return lines;
}

/** Hover / focus tooltip and arrow-key movement for the token elements inside ``container``. */
export function wireTokens(container, tip) {
  const show = (span) => {
    tip.replaceChildren(...describe(span).map((l) => Object.assign(document.createElement("div"), { textContent: l })));
    const r = span.getBoundingClientRect();
    tip.style.left = `${Math.round(r.left + window.scrollX)}px`;
    tip.style.top = `${Math.round(r.bottom + window.scrollY + 6)}px`;
    tip.hidden = false;
  };
  const hide = () => { tip.hidden = true; };
  container.addEventListener("mouseover", (e) => { if (e.target.classList.contains("tok")) show(e.target); });
  container.addEventListener("mouseout", hide);
  container.addEventListener("focusin", (e) => { if (e.target.classList.contains("tok")) show(e.target); });
  container.addEventListener("focusout", hide);
  container.addEventListener("keydown", (e) => {
    if (!e.target.classList.contains("tok")) return;
    const step = { ArrowRight: 1, ArrowDown: 1, ArrowLeft: -1, ArrowUp: -1 }[e.key];
    if (e.key === "Escape") hide();
    if (!step) return;
    const next = container.querySelector(`.tok[data-token-index="${Number(e.target.dataset.tokenIndex) + step}"]`);
    if (next) { e.preventDefault(); e.target.tabIndex = -1; next.tabIndex = 0; next.focus(); }
  });
}

// kinds whose low scores are the risky side (server/probing.py LOW_IS_RISK_KINDS)
const LOW_IS_RISK = new Set(["truth", "honesty", "factuality"]);

/** Probes whose high scores flag risk (the server flags them above the threshold, e.g. sycophancy). */
export function isRisky(kind) {
  return kind !== undefined && !LOW_IS_RISK.has(kind);
}

/** The colour legend for ``probe`` (its kind says which end of the scale is risky). */
export function legend(probe, kind) {
  const box = document.createElement("div");
  box.className = "legend";
  const risky = isRisky(kind);
  const span = (cls, text) => Object.assign(document.createElement("span"), { className: cls, textContent: text });
  box.appendChild(span("", probe ? `${probe} score: ${risky ? "orange = high (risky), blue = low" : "blue = high, orange = low (risky)"}`
    : "no probe selected"));
  for (const v of [0, 0.25, 0.5, 0.75, 1]) {
    const sw = span("swatch", String(v));
    sw.style.background = colour(v, risky);
    box.appendChild(sw);
  }
  const steered = span("tok demo", "steered");
  steered.dataset.steered = "true";
  const contrasted = span("tok demo", "contrasted");
  contrasted.dataset.contrasted = "true";
  box.append(steered, contrasted);
  return box;
}

function row(cells, tag = "td") {
  const tr = document.createElement("tr");
  for (const c of cells) tr.appendChild(Object.assign(document.createElement(tag), { textContent: c }));
  return tr;
}

/** A table with one row per token: the text alternative of the colours. */
export function scoreTable(spans, probes) {
  const table = document.createElement("table");
  table.className = "scores";
  table.appendChild(row(["#", "token", ...probes, "steered", "contrasted"], "th"));
  for (const s of spans) {
    table.appendChild(row([s.dataset.tokenIndex, JSON.stringify(s.textContent),
      ...probes.map((p) => s.getAttribute(`data-score-${p}`) ?? ""), s.dataset.steered, s.dataset.contrasted]));
  }
  return table;
}

/** The choice's summary: probe summary and flags, interventions, finish reason, abstain, usage. */
export function summary(result) {
  const dl = document.createElement("dl");
  dl.className = "summary";
  const add = (k, v) => {
    dl.appendChild(Object.assign(document.createElement("dt"), { textContent: k }));
    const dd = Object.assign(document.createElement("dd"), { textContent: v });
    dd.dataset.field = k;
    dl.appendChild(dd);
  };
  add("finish reason", result.finish_reason ?? "…");
  for (const [p, s] of Object.entries(result.probe_summary || {})) {
    const f = (v) => (v == null ? "n/a" : v.toFixed(3));
    add(`${p} probe`, `mean ${f(s.mean)} · min ${f(s.min)} · last ${f(s.last)}${s.flagged ? " · FLAGGED" : ""}`);
  }
  if (result.interventions) {
    const iv = result.interventions;
    add("interventions", `steered ${iv.steered_tokens} · contrasted ${iv.contrasted_tokens ?? "unknown"}`);
  }
  if (result.abstain) {
    const a = result.abstain;
    add("abstain", `${a.abstained ? "ABSTAINED" : "answered"}: ${a.reduce} ${a.probe} ${a.score == null ? "n/a" : a.score.toFixed(3)} vs ${a.below}`);
  }
  if (result.usage) add("tokens", `prompt ${result.usage.prompt_tokens} · completion ${result.usage.completion_tokens}`);
  return dl;
}
