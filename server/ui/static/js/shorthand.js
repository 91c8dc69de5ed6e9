// Text forms of the configuration, shared by the form and the URL.
// Steering: the CLI's shorthand (steering/llm.py parse_shorthand), same grammar:
//   NAME:+S        add S times the direction at the bundle's recommended layers
//   NAME:+S@A-B    ... at layers A..B (inclusive); NAME:-S@A is one layer
//   NAME:ablate / NAME:clamp [@A-B]
// An operation the shorthand cannot express (positions, gate, target, non-contiguous layers,
// a strength on ablate/clamp) is written as its JSON object instead; both forms parse.

const SHORT = /^([A-Za-z0-9][A-Za-z0-9_.-]*):(?:(ablate|clamp)|([+-]?\d+(?:\.\d+)?(?:e[+-]?\d+)?))(?:@(\d+)(?:-(\d+))?)?$/;

function range(lo, hi) {
  const out = [];
  for (let k = lo; k <= hi; k++) out.push(k);
  return out;
}

/** One steering operation (request shape) from shorthand or JSON text; throws on bad input. */
export function parseSteer(text) {
  const t = text.trim();
  if (t.startsWith("{")) return JSON.parse(t);
  const m = SHORT.exec(t);
  if (!m) throw new Error(`cannot parse steering shorthand "${t}"; use NAME:+STRENGTH[@L[-L2]] or NAME:ablate|clamp[@L[-L2]]`);
  const op = { direction: m[1] };
  if (m[2]) op.op = m[2];
  else { op.op = "add"; op.strength = Number(m[3]); }
  if (m[4] !== undefined) {
    const lo = Number(m[4]);
    op.layers = range(lo, m[5] !== undefined ? Number(m[5]) : lo);
  }
  return op;
}

/** Layer list of an op (list or {start, end} with end exclusive); null = recommended layers. */
export function layerList(layers) {
  if (layers === undefined || layers === null) return null;
  if (Array.isArray(layers)) return layers.map(Number);
  return range(layers.start, layers.end - 1);
}

function contiguous(list) {
  return list.length > 0 && list.every((k, i) => i === 0 || k === list[i - 1] + 1);
}

/** Shorthand when it can express ``op`` exactly, else its JSON. */
export function formatSteer(op) {
  const extra = Object.keys(op).filter((k) => !["direction", "op", "strength", "layers"].includes(k));
  const kind = op.op || "add";
  const layers = layerList(op.layers);
  const plainStrength = kind === "add" ? typeof op.strength === "number" : op.strength == null;
  if (extra.length || !plainStrength || (layers && !contiguous(layers))) return JSON.stringify(op);
  let s = `${op.direction}:`;
  s += kind === "add" ? `${op.strength >= 0 ? "+" : ""}${op.strength}` : kind;
  if (layers) s += layers.length === 1 ? `@${layers[0]}` : `@${layers[0]}-${layers[layers.length - 1]}`;
  return s;
}

/** "16-18", "3,5-7" -> [16, 17, 18], [3, 5, 6, 7]; "" -> null (recommended layers). */
export function parseLayers(text) {
  const t = text.trim();
  if (!t) return null;
  const out = [];
  for (const part of t.split(",")) {
    const m = /^\s*(\d+)\s*(?:-\s*(\d+))?\s*$/.exec(part);
    if (!m) throw new Error(`layers: cannot read "${part.trim()}" (use e.g. 10-14 or 3,5,7)`);
    out.push(...range(Number(m[1]), m[2] !== undefined ? Number(m[2]) : Number(m[1])));
  }
  return out;
}

export function formatLayers(list) {
  if (!list || !list.length) return "";
  const parts = [];
  let start = list[0];
  for (let i = 1; i <= list.length; i++) {
    if (i === list.length || list[i] !== list[i - 1] + 1) {
      parts.push(start === list[i - 1] ? `${start}` : `${start}-${list[i - 1]}`);
      start = list[i];
    }
  }
  return parts.join(",");
}

/** decoding: JSON, or "dola", "dola:high", "contrast:4,10"; "" or "none" -> null. */
export function parseDecoding(text) {
  const t = (text || "").trim();
  if (!t || t === "none") return null;
  if (t.startsWith("{")) return JSON.parse(t);
  const [method, layers] = t.split(":");
  const out = { method };
  if (layers) out.premature_layers = /^(low|high)$/.test(layers) ? layers : layers.split(",").map(Number);
  return out;
}

export function formatDecoding(d) {
  if (!d) return "";
  const keys = Object.keys(d).filter((k) => k !== "method" && k !== "premature_layers");
  if (keys.length) return JSON.stringify(d);
  const pl = d.premature_layers;
  if (pl === undefined) return d.method;
  return `${d.method}:${Array.isArray(pl) ? pl.join(",") : pl}`;
}

/** abstain: "truth:0.3" or "truth:0.3:min" (probe, below, reduce); "" -> null. */
export function parseAbstain(text) {
  const t = (text || "").trim();
  if (!t) return null;
  if (t.startsWith("{")) return JSON.parse(t);
  const [probe, below, reduce] = t.split(":");
  const out = { probe, below: Number(below) };
  if (reduce) out.reduce = reduce;
  return out;
}

export function formatAbstain(a) {
  if (!a) return "";
  const keys = Object.keys(a).filter((k) => !["probe", "below", "reduce"].includes(k));
  if (keys.length) return JSON.stringify(a);
  return `${a.probe}:${a.below}${a.reduce ? `:${a.reduce}` : ""}`;
}
