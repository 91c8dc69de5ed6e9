// Entry point: tabs, the API key prompt, loading the model and directions, running each tab's
// action (and running it on load with autorun=1), and keeping the URL equal to the configuration.
import { api, AuthError, setKey } from "./api.js";
import { fillForm, initForm, readForm } from "./form.js";
import { resultView, runInto } from "./run.js";
import { runScore } from "./score.js";
import { readState, writeState } from "./state.js";

const $ = (id) => document.getElementById(id);
const TABS = ["generate", "compare", "score"];
let state = readState(location.search);
const ctx = { model: null, kinds: {}, signal: null };
let controller = null;

function showTab(tab) {
  state.tab = tab;
  for (const t of TABS) {
    const button = $(`tab-${t}-button`);
    button.setAttribute("aria-selected", String(t === tab));
    button.tabIndex = t === tab ? 0 : -1;
    $(`tab-${t}`).hidden = t !== tab;
  }
  $("config").hidden = tab === "score";
}

function wireTabs() {
  TABS.forEach((t, i) => {
    const button = $(`tab-${t}-button`);
    button.addEventListener("click", () => { showTab(t); syncUrl(); });
    button.addEventListener("keydown", (e) => {
      const step = { ArrowRight: 1, ArrowLeft: -1 }[e.key];
      if (!step) return;
      const next = TABS[(i + step + TABS.length) % TABS.length];
      showTab(next);
      $(`tab-${next}-button`).focus();
    });
  });
}

function syncUrl() {
  state = readForm(state);
  history.replaceState(null, "", `?${writeState(state)}`);
  $("share-link").value = `${location.origin}${location.pathname}?${writeState(state, { autorun: true })}`;
}

function status(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function guarded(action) {
  if (controller) controller.abort();
  controller = new AbortController();
  ctx.signal = controller.signal;
  syncUrl();
  status("running…");
  try {
    await action();
    status("done");
  } catch (e) {
    if (e.name === "AbortError") return;
    if (e instanceof AuthError) return askKey("The server needs an API key.");
    status(e.message, true);
  }
}

const actions = {
  generate: () => runInto(resultView($("generate-out"), "Answer"), state, state.steer, ctx),
  compare: () => Promise.all([
    runInto(resultView($("compare-a"), "A: steering of the form"), state, state.steer, ctx),
    runInto(resultView($("compare-b"), state.steer_b.length ? "B: steering B" : "B: no steering"), state, state.steer_b, ctx),
  ]),
  score: () => runScore($("score-out"), state.statements, $("score-reduce").value, ctx),
};

function askKey(message) {
  $("auth").hidden = false;
  $("app").hidden = true;
  $("auth-message").textContent = message;
  $("api-key").focus();
}

async function connect() {
  try {
    const models = await api("/v1/models");
    if (ctx.model) { // a key asked for later: the page is already set up
      $("auth").hidden = true;
      $("app").hidden = false;
      return;
    }
    ctx.model = models.data[0].id;
    const dirs = await api("/v1/directions");
    ctx.kinds = Object.fromEntries(dirs.data.map((d) => [d.name, d.kind]));
    $("auth").hidden = true;
    $("app").hidden = false;
    $("model-name").textContent = ctx.model;
    initForm(dirs.data);
    fillForm(state);
    showTab(state.tab);
    syncUrl();
    if (state.errors.length) status(`ignored in the link: ${state.errors.join("; ")}`, true);
    if (state.autorun) await guarded(actions[state.tab]);
  } catch (e) {
    if (e instanceof AuthError) askKey("The server needs an API key. It stays in this tab only.");
    else status(`cannot reach the API: ${e.message}`, true);
  }
}

$("auth-form").addEventListener("submit", (e) => {
  e.preventDefault();
  setKey($("api-key").value);
  $("api-key").value = "";
  $("auth-message").textContent = "checking…";
  connect();
});
wireTabs();
$("run-generate").addEventListener("click", () => guarded(actions.generate));
$("run-compare").addEventListener("click", () => guarded(actions.compare));
$("run-score").addEventListener("click", () => guarded(actions.score));
$("config").addEventListener("change", syncUrl);
$("copy-link").addEventListener("click", async () => {
  syncUrl();
  $("share-link").select();
  try { await navigator.clipboard.writeText($("share-link").value); status("link copied"); } catch { status("link selected; copy it"); }
});
connect();
