// The score tab: statements (one per line, optional ",label" with label 0/1 or false/true) scored
// by POST /v1/probes/score; with labels, each probe's ROC curve and AUROC.
// The AUROC is the trapezoid area under the ROC curve whose points are the distinct score
// thresholds, highest first: ties count one half, the same definition as scikit-learn's
// roc_auc_score.
import { api } from "./api.js";
import { rocChart } from "./plots.js";

const LABELS = { 0: 0, 1: 1, false: 0, true: 1 };
const BATCH = 16;

/** [{text, label|null}] from the textarea's lines (blank lines skipped). */
export function parseStatements(text) {
  const out = [];
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (!line) continue;
    const m = /^(.*),\s*(0|1|true|false)$/i.exec(line);
    out.push(m ? { text: m[1].trim(), label: LABELS[m[2].toLowerCase()] } : { text: line, label: null });
  }
  return out;
}

/** ROC points and area; ``labels`` 0/1, ``scores`` numbers (same length, both classes present). */
export function roc(labels, scores) {
  const order = scores.map((s, i) => i).sort((a, b) => scores[b] - scores[a]);
  const P = labels.filter((l) => l === 1).length, N = labels.length - P;
  const fpr = [0], tpr = [0];
  let tp = 0, fp = 0;
  for (let j = 0; j < order.length; j++) {
    const i = order[j];
    if (labels[i] === 1) tp++; else fp++;
    if (j + 1 < order.length && scores[order[j + 1]] === scores[i]) continue; // one point per threshold
    fpr.push(fp / N);
    tpr.push(tp / P);
  }
  let auc = 0;
  for (let k = 1; k < fpr.length; k++) auc += ((fpr[k] - fpr[k - 1]) * (tpr[k] + tpr[k - 1])) / 2;
  return { fpr, tpr, auc };
}

/** Score the statements of the textarea and render the table, AUROC and ROC curve into ``host``. */
export async function runScore(host, text, reduce, ctx) {
  host.replaceChildren();
  host.dataset.state = "running";
  const items = parseStatements(text);
  if (!items.length) throw new Error("no statements to score");
  const rows = [];
  for (let i = 0; i < items.length; i += BATCH) {
    const r = await api("/v1/probes/score", { model: ctx.model, input: items.slice(i, i + BATCH).map((x) => x.text),
      probes: "all", reduce }, ctx.signal);
    rows.push(...r.data.map((d) => d.scores));
  }
  const probes = Object.keys(rows[0] || {});
  const table = document.createElement("table");
  table.className = "scores";
  table.innerHTML = "<tr><th>statement</th><th>label</th></tr>";
  for (const p of probes) table.rows[0].appendChild(Object.assign(document.createElement("th"), { textContent: p }));
  items.forEach((it, i) => {
    const tr = table.insertRow();
    tr.dataset.index = String(i);
    tr.insertCell().textContent = it.text;
    tr.insertCell().textContent = it.label === null ? "" : String(it.label);
    for (const p of probes) {
      const td = tr.insertCell();
      td.textContent = rows[i][p] == null ? "n/a" : rows[i][p].toFixed(4);
      td.setAttribute(`data-score-${p}`, String(rows[i][p]));
    }
  });
  const labelled = items.map((it, i) => ({ ...it, i })).filter((it) => it.label !== null);
  const curves = {};
  const both = new Set(labelled.map((it) => it.label)).size === 2;
  if (both) {
    for (const p of probes) {
      const ok = labelled.filter((it) => rows[it.i][p] != null);
      curves[p] = roc(ok.map((it) => it.label), ok.map((it) => rows[it.i][p]));
    }
  }
  const aurocs = document.createElement("ul");
  aurocs.className = "aurocs";
  for (const [p, c] of Object.entries(curves)) {
    const li = Object.assign(document.createElement("li"), { textContent: `${p}: AUROC ${c.auc.toFixed(4)} (${labelled.length} labelled)` });
    li.dataset.probe = p;
    li.dataset.auroc = String(c.auc);
    aurocs.appendChild(li);
  }
  if (!both && labelled.length) aurocs.appendChild(Object.assign(document.createElement("li"), { textContent: "AUROC needs both labels (0 and 1)" }));
  host.append(aurocs);
  if (both) host.append(rocChart(curves));
  host.append(table);
  host.dataset.state = "done";
}
