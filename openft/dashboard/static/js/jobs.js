// The jobs list: newest first, a page at a time ("Load more"), filtered by metadata (by the API) and by
// status (over the loaded rows: the API has no status filter). Progress comes from each job's latest step.

import { api } from "./api.js";
import { errorBox, h, methodOf, showError, statusBadge, when } from "./ui.js";

const STATUSES = ["validating_files", "queued", "running", "pausing", "paused", "succeeded", "failed", "cancelled"];

export function jobsPage(root, params) {
  const status = h("select", { id: "filter-status" }, h("option", { value: "" }, "Any status"),
    STATUSES.map((s) => h("option", { value: s, selected: params.get("status") === s }, s.replace("_", " "))));
  const metaKey = h("input", { id: "filter-meta-key", value: params.get("meta_key") || "", placeholder: "key" });
  const metaValue = h("input", { id: "filter-meta-value", value: params.get("meta_value") || "", placeholder: "value" });
  const body = h("tbody");
  const more = h("button", { type: "button", id: "load-more", hidden: true }, "Load more");
  const error = errorBox("jobs-error");
  const empty = h("p", { class: "muted", hidden: true, id: "jobs-empty" }, "No jobs match.");
  let cursor = null;
  let stopped = false;

  async function load(reset) {
    if (reset) { body.replaceChildren(); cursor = null; }
    const q = new URLSearchParams({ limit: "20" });
    if (cursor) q.set("after", cursor);
    if (metaKey.value.trim()) q.set(`metadata[${metaKey.value.trim()}]`, metaValue.value);
    try {
      const page = await api(`/fine_tuning/jobs?${q}`);
      if (stopped) return;
      const rows = page.data.filter((j) => !status.value || j.status === status.value);
      body.append(...rows.map(row));
      cursor = page.data.length ? page.data[page.data.length - 1].id : cursor;
      more.hidden = !page.has_more;
      empty.hidden = body.children.length > 0;
      showError(error, null);
    } catch (e) { showError(error, e); }
  }

  const form = h("form", { class: "filters", role: "search", "aria-label": "Filter jobs" },
    h("label", { for: "filter-status" }, "Status"), status,
    h("label", { for: "filter-meta-key" }, "Metadata"), metaKey,
    h("label", { for: "filter-meta-value", class: "sr-only" }, "Metadata value"), metaValue,
    h("button", { type: "submit" }, "Filter"));
  form.addEventListener("submit", (e) => { e.preventDefault(); load(true); });
  more.addEventListener("click", () => load(false));

  root.append(
    h("div", { class: "title-row" }, h("h1", {}, "Fine-tuning jobs"), h("a", { class: "button", href: "#/create" }, "Create job")),
    form, error,
    h("div", { class: "table-wrap" }, h("table", { id: "jobs-table" },
      h("thead", {}, h("tr", {}, ["Job", "Status", "Base model", "Method", "Created", "Progress", "Fine-tuned model"]
        .map((c) => h("th", { scope: "col" }, c)))), body)),
    empty, more);
  load(true);
  return () => { stopped = true; };
}

function row(job) {
  const progress = h("td", { class: "progress-cell" }, job.status === "succeeded" ? "100%" : "—");
  if (!["succeeded", "validating_files"].includes(job.status)) fillProgress(job.id, progress);
  return h("tr", { "data-job": job.id },
    h("td", {}, h("a", { href: `#/jobs/${job.id}` }, job.id)),
    h("td", {}, statusBadge(job.status)),
    h("td", {}, job.model),
    h("td", {}, methodOf(job)),
    h("td", {}, when(job.created_at)),
    progress,
    h("td", { class: "mono" }, job.fine_tuned_model || "—"));
}

async function fillProgress(jobId, cell) {
  try {
    const page = await api(`/fine_tuning/jobs/${jobId}/events?limit=20`);
    const m = page.data.find((e) => e.type === "metrics" && e.data?.total_steps);
    if (m) {
      const pct = Math.floor((100 * m.data.step) / m.data.total_steps);
      cell.replaceChildren(h("progress", { max: "100", value: String(pct), "aria-label": `${pct}%` }), ` ${m.data.step}/${m.data.total_steps}`);
    }
  } catch { /* the row stays without progress */ }
}
