// One streamed completion rendered into a result view: token elements as chunks arrive, then the
// choice's summary, the per-token score trace and the scores as text.
import { streamSSE } from "./api.js";
import { traceChart } from "./plots.js";
import { endpoint, requestBody } from "./state.js";
import { isRisky, legend, scoreTable, summary, tokenElement, wireTokens } from "./tokens.js";

/** Per-token strings of a chunk's choice (from its logprobs entries). */
function chunkTokens(choice) {
  const lp = choice.logprobs;
  if (!lp) return [];
  if (Array.isArray(lp.content)) return lp.content.map((e) => e.token);
  return lp.tokens || [];
}

function chunkText(choice) {
  return choice.delta ? choice.delta.content || "" : choice.text || "";
}

/** Empty result view inside ``host``; returns its parts. */
export function resultView(host, title) {
  host.replaceChildren();
  const box = document.createElement("div");
  box.className = "result";
  box.innerHTML = `<h3></h3><div class="legend-slot"></div><div class="answer-row">
    <div class="tokens" role="group" aria-label="generated tokens; arrow keys move, focus shows scores"></div>
    <aside class="side" aria-live="polite"></aside></div><p class="abstained" hidden></p>
    <div class="trace"></div><details><summary>Scores as text</summary><div class="table-slot"></div></details>
    <p class="error" role="alert" hidden></p>`;
  box.querySelector("h3").textContent = title;
  host.appendChild(box);
  const tip = document.getElementById("tip");
  const tokens = box.querySelector(".tokens");
  wireTokens(tokens, tip);
  return { box, tokens, side: box.querySelector(".side"), trace: box.querySelector(".trace"),
    table: box.querySelector(".table-slot"), legendSlot: box.querySelector(".legend-slot"),
    abstained: box.querySelector(".abstained"), error: box.querySelector(".error") };
}

/** Stream ``state`` with steering ``steer`` into ``view``; resolves to the collected result. */
export async function runInto(view, state, steer, ctx) {
  const body = { model: ctx.model, ...requestBody(state, steer) };
  const probes = body.probes || [];
  const colourProbe = probes[0] || null;
  const risky = isRisky(ctx.kinds[colourProbe]);
  view.legendSlot.replaceChildren(legend(colourProbe, ctx.kinds[colourProbe]));
  view.box.dataset.state = "running";
  const res = { text: "", tokens: [], scores: Object.fromEntries(probes.map((p) => [p, []])), finish_reason: null,
    steered: [], usage: null };
  view.side.replaceChildren(summary(res));
  try {
    await streamSSE(endpoint(state), body, (chunk) => {
      if (chunk.usage) res.usage = chunk.usage;
      for (const choice of chunk.choices || []) {
        if (choice.index !== 0) continue;
        res.text += chunkText(choice);
        const toks = chunkTokens(choice);
        const flags = choice.token_flags || { steered: [], contrasted: [] };
        toks.forEach((t, i) => {
          const k = res.tokens.length;
          const scores = {};
          for (const p of probes) scores[p] = choice.probe_scores?.[p]?.[i] ?? null;
          for (const p of probes) res.scores[p].push(scores[p]);
          const steered = steer.length || state.decoding ? flags.steered[i] : false;
          const contrasted = steer.length || state.decoding ? flags.contrasted[i] : false;
          if (steered) res.steered.push(k);
          res.tokens.push(t);
          view.tokens.appendChild(tokenElement(k, t, scores, steered, contrasted, colourProbe, risky));
        });
        if (choice.finish_reason) {
          Object.assign(res, { finish_reason: choice.finish_reason, probe_summary: choice.probe_summary,
            interventions: choice.interventions, abstain: choice.abstain });
          if (choice.finish_reason === "abstained") res.text = chunkText(choice);
        }
      }
      view.side.replaceChildren(summary(res));
    }, ctx.signal);
  } catch (e) {
    view.error.textContent = e.message;
    view.error.hidden = false;
    view.box.dataset.state = "error";
    throw e;
  }
  finish(view, res, probes);
  return res;
}

function finish(view, res, probes) {
  view.side.replaceChildren(summary(res));
  if (res.finish_reason === "abstained") {
    view.abstained.textContent = `Abstained; the answer sent is: "${res.text}". The tokens above were generated and scored but withheld.`;
    view.abstained.hidden = false;
  }
  if (probes.length) view.trace.replaceChildren(traceChart(res.scores, res.steered));
  view.table.replaceChildren(scoreTable([...view.tokens.querySelectorAll(".tok")], probes));
  view.box.dataset.state = "done";
}
