// Models this key can use: base models, its own fine-tuned models and checkpoints, and those shared with it.
// Its own can be deleted, shared with another organization, and downloaded as an export archive.

import { api, download } from "./api.js";
import { errorBox, h, showError, when } from "./ui.js";

export function modelsPage(root) {
  const body = h("tbody", { id: "models" });
  const error = errorBox("models-error");
  const load = async () => {
    try {
      const list = await api("/models");
      body.replaceChildren(...list.data.map((m) => row(m, error, load)));
    } catch (e) { showError(error, e); }
  };
  root.append(h("h1", {}, "Models"), error,
    h("div", { class: "table-wrap" }, h("table", {},
      h("thead", {}, h("tr", {}, ["Model", "Owner", "Created", "Actions"].map((c) => h("th", { scope: "col" }, c)))), body)));
  load();
}

function row(m, error, reload) {
  const enc = encodeURIComponent(m.id);
  const actions = h("div", { class: "actions" },
    h("a", { class: "button", href: `#/playground?model=${enc}` }, "Chat"));
  const own = m.owned_by !== "openft";
  if (own) {
    const format = h("select", { "aria-label": `Export format for ${m.id}` }, h("option", { value: "adapter" }, "adapter"), h("option", { value: "merged" }, "merged"));
    const exp = h("button", { type: "button" }, "Download");
    exp.addEventListener("click", async () => {
      exp.disabled = true;
      try { await download(`/models/${enc}/export?format=${format.value}`, `${m.id.replace(/:/g, "_")}-${format.value}.tar.gz`); showError(error, null); }
      catch (e) { showError(error, e); }
      exp.disabled = false;
    });
    const org = h("input", { placeholder: "organization id", "aria-label": `Share ${m.id} with organization`, size: "14" });
    const share = h("button", { type: "button" }, "Share");
    const shared = h("span", { class: "muted shared" });
    const listShares = () => api(`/fine_tuning/checkpoints/${enc}/permissions?limit=100`)
      .then((p) => shared.replaceChildren(p.data.length ? `shared with ${p.data.map((x) => x.project_id).join(", ")}` : ""))
      .catch(() => { // a model shared *with* this key: only its owner may export, share or delete it
        for (const c of [format, exp, org, share, del]) c.remove();
        shared.replaceChildren("shared with you");
      });
    share.addEventListener("click", async () => {
      try {
        await api(`/fine_tuning/checkpoints/${enc}/permissions`, { method: "POST", body: { project_ids: [org.value.trim()] } });
        org.value = "";
        showError(error, null);
        listShares();
      } catch (e) { showError(error, e); }
    });
    const del = h("button", { type: "button", class: "danger" }, "Delete");
    del.addEventListener("click", async () => {
      if (del.dataset.armed !== "true") { del.dataset.armed = "true"; del.textContent = "Confirm delete"; return; }
      try { await api(`/models/${enc}`, { method: "DELETE" }); showError(error, null); reload(); }
      catch (e) { showError(error, e); del.dataset.armed = ""; del.textContent = "Delete"; }
    });
    actions.append(format, exp, org, share, del, shared);
    listShares();
  }
  return h("tr", { "data-model": m.id }, h("td", { class: "mono" }, m.id), h("td", {}, m.owned_by), h("td", {}, when(m.created)), h("td", {}, actions));
}
