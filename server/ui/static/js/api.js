// API access for the playground: the key (memory + this tab's sessionStorage at most), JSON calls,
// and SSE streams over fetch. Nothing here stores the key server-side or anywhere else.

const KEY_SLOT = "truthsteer.apiKey";
let apiKey = sessionStorage.getItem(KEY_SLOT) || "";

export class AuthError extends Error {}

export class APIError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(`${status}: ${e.message || "request failed"}${e.param ? ` (param: ${e.param})` : ""}`);
    this.status = status;
    this.param = e.param || null;
  }
}

export function setKey(key) {
  apiKey = key.trim();
  if (apiKey) sessionStorage.setItem(KEY_SLOT, apiKey);
  else sessionStorage.removeItem(KEY_SLOT);
}

function headers(json) {
  const h = {};
  if (json) h["content-type"] = "application/json";
  if (apiKey) h.authorization = `Bearer ${apiKey}`;
  return h;
}

async function check(resp) {
  if (resp.status === 401) throw new AuthError("an API key is needed");
  if (!resp.ok) {
    let body = null;
    try { body = await resp.json(); } catch { /* not JSON */ }
    throw new APIError(resp.status, body);
  }
  return resp;
}

/** GET or POST (when ``body`` is given) a JSON endpoint. */
export async function api(path, body, signal) {
  const init = body === undefined ? { headers: headers(false) }
    : { method: "POST", headers: headers(true), body: JSON.stringify(body) };
  const resp = await check(await fetch(path, { ...init, signal }));
  return resp.json();
}

/** POST ``body`` with ``stream: true``; call ``onChunk`` with every parsed ``data:`` object. */
export async function streamSSE(path, body, onChunk, signal) {
  const resp = await check(await fetch(path, {
    method: "POST", headers: headers(true), body: JSON.stringify({ ...body, stream: true }), signal,
  }));
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const event = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        onChunk(JSON.parse(data));
      }
    }
  }
}
