// The API client: every request goes to this origin's /v1 with the signed-in key as the bearer token.
// Errors come back as ApiError carrying OpenAI's error envelope (message, code, param) and the HTTP status.

const KEY = "openft.apiKey";

export class ApiError extends Error {
  constructor(status, body) {
    const err = (body && body.error) || {};
    super(err.message || `The server answered ${status}.`);
    this.status = status;
    this.code = err.code || null;
    this.param = err.param || null;
  }
}

export const auth = {
  get key() { return sessionStorage.getItem(KEY) || ""; },
  set key(value) { value ? sessionStorage.setItem(KEY, value) : sessionStorage.removeItem(KEY); },
};

function headers(extra = {}) {
  const h = { ...extra };
  if (auth.key) h.Authorization = `Bearer ${auth.key}`;
  return h;
}

export async function raw(path, { method = "GET", body, form, signal } = {}) {
  const init = { method, headers: headers(), signal };
  if (form) init.body = form;
  else if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const res = await fetch(`/v1${path}`, init);
  if (!res.ok) {
    let payload = null;
    try { payload = await res.json(); } catch { /* not JSON: the status says enough */ }
    throw new ApiError(res.status, payload);
  }
  return res;
}

export async function api(path, options) {
  return (await raw(path, options)).json();
}

/** True when this server wants a key and the stored one (if any) is not accepted. */
export async function needsSignIn() {
  try {
    await api("/models");
    return false;
  } catch (e) {
    if (e.status === 401) return true;
    throw e;
  }
}

export async function uploadFile(file, purpose = "fine-tune") {
  const form = new FormData();
  form.append("purpose", purpose);
  form.append("file", file, file.name);
  return api("/files", { method: "POST", form });
}

/** Fetch a file (the key travels as a header, so a plain link cannot) and hand it to the browser as a download. */
export async function download(path, filename) {
  const blob = await (await raw(path)).blob();
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = filename;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

/** Server-sent event records ({event, id, data}) from a fetch response body; comments (keep-alives) are skipped. */
export async function* sseRecords(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const record = { event: "message", id: null, data: [] };
      for (const line of block.split("\n")) {
        if (!line || line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const val = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "data") record.data.push(val);
        else if (field === "event") record.event = val;
        else if (field === "id") record.id = val;
      }
      if (record.data.length) yield { ...record, data: record.data.join("\n") };
    }
  }
}

const sleep = (ms, signal) => new Promise((resolve) => {
  const t = setTimeout(resolve, ms);
  signal?.addEventListener("abort", () => { clearTimeout(t); resolve(); }, { once: true });
});

/**
 * Follow a job's events, oldest first, calling onEvent(event) once per event until signal aborts.
 * The server streams them (text/event-stream, resumable with after=<last id>); a server without the stream
 * answers with the JSON list, which is then polled every second. The stream ends when the job is paused or
 * terminal: isDone() says whether to stop, otherwise it is reopened after the last event seen.
 */
export async function followEvents(jobId, onEvent, { signal, isDone }) {
  let last = null;
  const seen = new Set();
  const emit = (ev) => { if (!seen.has(ev.id)) { seen.add(ev.id); last = ev.id; onEvent(ev); } };
  let streams = true; // until the server answers the stream request with the JSON list instead
  while (!signal.aborted) {
    try {
      if (streams) streams = await readStream(jobId, last, emit, signal);
      if (!streams) await pollEvents(jobId, seen, emit, signal);
    } catch (e) {
      if (signal.aborted || e.status === 401 || e.status === 404) return; // no such job for this key: stop
    }
    if (await isDone()) return;
    await sleep(1000, signal);
  }
}

async function readStream(jobId, last, emit, signal) {
  const query = `stream=true${last ? `&after=${encodeURIComponent(last)}` : ""}`;
  const res = await raw(`/fine_tuning/jobs/${jobId}/events?${query}`, { signal });
  if (!(res.headers.get("content-type") || "").startsWith("text/event-stream")) {
    await res.body?.cancel();
    return false;
  }
  for await (const rec of sseRecords(res)) {
    if (rec.event === "end") break;
    if (rec.event === "fine_tuning.job.event") emit(JSON.parse(rec.data));
  }
  return true;
}

/** The JSON list is newest first: read pages back to the newest event already seen, then emit oldest first. */
async function pollEvents(jobId, seen, emit, signal) {
  const fresh = [];
  let after = null;
  for (;;) {
    const q = `limit=100${after ? `&after=${encodeURIComponent(after)}` : ""}`;
    const page = await api(`/fine_tuning/jobs/${jobId}/events?${q}`, { signal });
    const unseen = page.data.filter((ev) => !seen.has(ev.id));
    fresh.push(...unseen);
    if (!page.has_more || unseen.length < page.data.length || !page.data.length) break;
    after = page.data[page.data.length - 1].id;
  }
  fresh.reverse().forEach(emit);
}

/** Stream a chat completion, calling onDelta(text) per piece; resolves with the whole reply. */
export async function chatStream(body, onDelta, signal) {
  const res = await raw("/chat/completions", { method: "POST", body: { ...body, stream: true }, signal });
  let text = "";
  for await (const rec of sseRecords(res)) {
    if (rec.data === "[DONE]") break;
    const chunk = JSON.parse(rec.data);
    if (chunk.error) throw new ApiError(500, chunk);
    const delta = chunk.choices?.[0]?.delta?.content || "";
    if (delta) { text += delta; onDelta(delta, text); }
  }
  return text;
}
