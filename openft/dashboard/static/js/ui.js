// Small DOM helpers: build elements without innerHTML (server text is never parsed as markup), format times,
// and show an API error where the person is looking.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  el.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

export function when(seconds) {
  if (!seconds) return "—";
  return new Date(seconds * 1000).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "medium" });
}

export function inFuture(seconds) {
  const left = Math.round(seconds - Date.now() / 1000);
  if (left <= 0) return "any moment";
  if (left < 90) return `about ${left} s`;
  if (left < 5400) return `about ${Math.round(left / 60)} min`;
  return `about ${(left / 3600).toFixed(1)} h`;
}

export function statusBadge(status) {
  return h("span", { class: `badge status-${status}`, "data-status": status }, status.replace("_", " "));
}

/** The message an API error deserves; a 409 is explained in terms of what the job is doing now. */
export function explain(error) {
  if (error.status === 409) return `Not possible right now (409 Conflict): ${error.message}`;
  if (error.status === 401) return `Not signed in or the key was rejected (401): ${error.message}`;
  if (error.status === 404) return `Not found (404): ${error.message}`;
  return error.status ? `${error.message} (${error.status}${error.code ? `, ${error.code}` : ""})` : String(error.message || error);
}

export function showError(target, error) {
  target.replaceChildren(error ? explain(error) : "");
  target.hidden = !error;
}

export function errorBox(id) {
  return h("p", { class: "error", role: "alert", id, hidden: true });
}

export function methodOf(job) {
  return job.method?.type || "supervised";
}

/** Hyperparameters as the job reports them: under its method when present, else the top-level object. */
export function hyperparametersOf(job) {
  const m = methodOf(job);
  return job.method?.[m]?.hyperparameters || job.hyperparameters || {};
}
