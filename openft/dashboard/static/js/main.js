// The dashboard's entry: sign-in when the server has API keys, then a hash router over the pages.
// Each page renders into <main> and returns a function that stops its timers and streams when it is left.

import { auth, needsSignIn } from "./api.js";
import { errorBox, h, showError } from "./ui.js";
import { jobsPage } from "./jobs.js";
import { jobPage } from "./job.js";
import { createPage } from "./create.js";
import { playgroundPage } from "./playground.js";
import { modelsPage } from "./models.js";

const view = document.getElementById("view");
const signOut = document.getElementById("sign-out");
let leave = null;

const routes = [
  [/^#\/jobs\/([\w-]+)$/, jobPage, "jobs"],
  [/^#\/jobs$/, jobsPage, "jobs"],
  [/^#\/create$/, createPage, "create"],
  [/^#\/playground$/, playgroundPage, "playground"],
  [/^#\/models$/, modelsPage, "models"],
];

function route() {
  const [path, query] = (location.hash || "#/jobs").split("?");
  const params = new URLSearchParams(query || "");
  const found = routes.find(([re]) => re.test(path));
  if (!found) { location.hash = "#/jobs"; return; }
  const [re, page, nav] = found;
  leave?.();
  leave = null;
  for (const a of document.querySelectorAll("[data-nav]")) {
    if (a.dataset.nav === nav) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  view.replaceChildren();
  leave = page(view, ...path.match(re).slice(1), params) || null;
}

function signIn(message) {
  leave?.();
  leave = null;
  const key = h("input", { id: "api-key", type: "password", autocomplete: "off", required: true, spellcheck: "false" });
  const error = errorBox("sign-in-error");
  if (message) showError(error, { message });
  const form = h("form", { class: "card narrow", id: "sign-in" },
    h("h1", {}, "Sign in"),
    h("p", {}, "This server needs an API key (created with ", h("code", {}, "openft keys create"),
      "). It stays in this browser tab only."),
    h("label", { for: "api-key" }, "API key"), key, error,
    h("button", { type: "submit" }, "Sign in"));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    auth.key = key.value.trim();
    if (await needsSignIn()) { auth.key = ""; showError(error, { message: "That API key was not accepted." }); return; }
    start();
  });
  view.replaceChildren(form);
  key.focus();
}

async function start() {
  try {
    if (await needsSignIn()) { signOut.hidden = true; signIn(); return; }
  } catch (e) {
    view.replaceChildren(h("p", { class: "error", role: "alert" }, `The server cannot be reached: ${e.message}`));
    return;
  }
  signOut.hidden = !auth.key;
  if (!location.hash) location.hash = "#/jobs";
  route();
}

signOut.addEventListener("click", () => { auth.key = ""; signOut.hidden = true; signIn(); });
window.addEventListener("hashchange", () => {
  if (document.getElementById("sign-in")) return;
  route();
  view.focus({ preventScroll: true }); // a screen reader or keyboard user starts on the new page, not the old link
});
start();
