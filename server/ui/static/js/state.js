// The whole configuration as a URL query, so that a link reproduces a result.
//   prompt        one user message (chat mode, the default) or the raw prompt (mode=completion)
//   mode          chat | completion
//   messages      JSON list of chat messages (overrides prompt in chat mode)
//   max_tokens, temperature, seed
//   probes        comma list of probe names ("" = none)
//   steer         repeatable, CLI shorthand (truth:+2, truth:-2@10-14) or an op's JSON
//   steer_b       repeatable: configuration B of the compare tab (none = unsteered)
//   decoding      dola | dola:high | contrast:4,10 | JSON object
//   abstain       truth:0.3[:mean|min|last] | JSON object
//   tab           generate | compare | score;  statements: the score tab's text
//   autorun=1     run the tab's action on load
import { formatAbstain, formatDecoding, formatSteer, parseAbstain, parseDecoding, parseSteer } from "./shorthand.js";

export const DEFAULTS = Object.freeze({
  mode: "chat", prompt: "", messages: null, max_tokens: 32, temperature: 0, seed: null,
  probes: null, steer: [], steer_b: [], decoding: null, abstain: null, tab: "generate",
  statements: "", autorun: false,
});

function num(v, fallback) {
  if (v === null || v === "") return fallback;
  const n = Number(v);
  return Number.isFinite(n) ? n : fallback;
}

/** Configuration from a query string; ``errors`` collects what could not be read. */
export function readState(search) {
  const q = new URLSearchParams(search);
  const errors = [];
  const safe = (what, fn, fallback) => {
    try { return fn(); } catch (e) { errors.push(`${what}: ${e.message}`); return fallback; }
  };
  const s = { ...DEFAULTS, errors };
  s.mode = q.get("mode") === "completion" ? "completion" : "chat";
  s.prompt = q.get("prompt") ?? "";
  if (q.has("messages")) s.messages = safe("messages", () => JSON.parse(q.get("messages")), null);
  s.max_tokens = num(q.get("max_tokens"), DEFAULTS.max_tokens);
  s.temperature = num(q.get("temperature"), DEFAULTS.temperature);
  s.seed = num(q.get("seed"), null);
  if (q.has("probes")) s.probes = q.get("probes").split(",").map((p) => p.trim()).filter(Boolean);
  s.steer = q.getAll("steer").filter(Boolean).map((t) => safe(`steer ${t}`, () => parseSteer(t), null)).filter(Boolean);
  s.steer_b = q.getAll("steer_b").filter(Boolean).map((t) => safe(`steer_b ${t}`, () => parseSteer(t), null)).filter(Boolean);
  s.decoding = safe("decoding", () => parseDecoding(q.get("decoding")), null);
  s.abstain = safe("abstain", () => parseAbstain(q.get("abstain")), null);
  s.tab = ["generate", "compare", "score"].includes(q.get("tab")) ? q.get("tab") : "generate";
  s.statements = q.get("statements") ?? "";
  s.autorun = q.get("autorun") === "1";
  return s;
}

/** Query string of a configuration (defaults left out; ``autorun`` only when asked). */
export function writeState(s, { autorun = false } = {}) {
  const q = new URLSearchParams();
  if (s.tab !== "generate") q.set("tab", s.tab);
  if (s.mode !== "chat") q.set("mode", s.mode);
  if (s.messages) q.set("messages", JSON.stringify(s.messages));
  else if (s.prompt) q.set("prompt", s.prompt);
  for (const k of ["max_tokens", "temperature"]) if (s[k] !== DEFAULTS[k]) q.set(k, String(s[k]));
  if (s.seed !== null) q.set("seed", String(s.seed));
  if (s.probes !== null) q.set("probes", s.probes.join(","));
  for (const op of s.steer) q.append("steer", formatSteer(op));
  for (const op of s.steer_b) q.append("steer_b", formatSteer(op));
  if (s.decoding) q.set("decoding", formatDecoding(s.decoding));
  if (s.abstain) q.set("abstain", formatAbstain(s.abstain));
  if (s.statements && s.tab === "score") q.set("statements", s.statements);
  if (autorun) q.set("autorun", "1");
  return q.toString();
}

/** The request body (without ``model`` / ``stream``) of a configuration, with steering ``steer``. */
export function requestBody(s, steer) {
  const body = { max_tokens: s.max_tokens, temperature: s.temperature };
  if (s.mode === "completion") {
    body.prompt = s.prompt;
    body.logprobs = 0; // per-token text comes from the logprobs entries
  } else {
    body.messages = s.messages || [{ role: "user", content: s.prompt }];
    body.logprobs = true;
  }
  if (s.seed !== null) body.seed = s.seed;
  if (s.probes && s.probes.length) body.probes = s.probes;
  if (steer && steer.length) body.steering = steer;
  if (s.decoding) body.decoding = s.decoding;
  if (s.abstain) body.abstain = s.abstain;
  body.stream_options = { include_usage: true };
  return body;
}

export function endpoint(s) {
  return s.mode === "completion" ? "/v1/completions" : "/v1/chat/completions";
}
