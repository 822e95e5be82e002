// The playground: chat with any model this key can sample (base, fine-tuned, checkpoint), streamed; with
// "Compare" on, the same prompt goes to a second model and both replies stream side by side.

import { api, chatStream } from "./api.js";
import { errorBox, h, showError } from "./ui.js";

export function playgroundPage(root, params) {
  const ctl = new AbortController();
  const panes = [pane("a", params.get("model")), pane("b", params.get("compare"))];
  const compare = h("input", { type: "checkbox", id: "compare", checked: Boolean(params.get("compare")) });
  const system = h("textarea", { id: "system-prompt", rows: "2", placeholder: "optional" });
  const prompt = h("textarea", { id: "prompt", rows: "3", required: true });
  const maxTokens = h("input", { id: "max-tokens", type: "number", min: "1", max: "4096", value: "64" });
  const temperature = h("input", { id: "temperature", type: "number", min: "0", max: "2", step: "0.1", value: "0.7" });
  const send = h("button", { type: "submit", id: "send" }, "Send");
  const clear = h("button", { type: "button", id: "clear" }, "Clear");
  const error = errorBox("playground-error");

  const layoutPanes = () => { panes[1].root.hidden = !compare.checked; };
  compare.addEventListener("change", layoutPanes);
  layoutPanes();
  api("/models").then((list) => panes.forEach((p) => p.fill(list.data))).catch((e) => showError(error, e));

  const form = h("form", { id: "chat-form", class: "card" },
    h("div", { class: "grid2" },
      h("div", { class: "field" }, h("label", { for: "system-prompt" }, "System message"), system),
      h("div", { class: "field" }, h("label", { for: "prompt" }, "Message"), prompt)),
    h("div", { class: "row" },
      h("label", { for: "max-tokens" }, "Max tokens"), maxTokens,
      h("label", { for: "temperature" }, "Temperature"), temperature,
      h("label", { class: "check" }, compare, " Compare with a second model"),
      send, clear),
    error);
  prompt.addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) form.requestSubmit(); });
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const text = prompt.value.trim();
    if (!text) return;
    showError(error, null);
    send.disabled = true;
    prompt.value = "";
    const active = compare.checked ? panes : panes.slice(0, 1);
    await Promise.all(active.map((p) => p.ask(text, system.value.trim(), { max_tokens: +maxTokens.value || 64, temperature: +temperature.value }, ctl.signal)));
    send.disabled = false;
    prompt.focus();
  });
  clear.addEventListener("click", () => panes.forEach((p) => p.clear()));

  root.append(h("h1", {}, "Playground"), form, h("div", { class: "panes" }, panes.map((p) => p.root)));
  return () => ctl.abort();
}

function pane(id, preset) {
  const select = h("select", { id: `model-${id}` });
  const transcript = h("ol", { class: "transcript", id: `transcript-${id}`, "aria-live": "polite" });
  const error = errorBox(`error-${id}`);
  const history = [];
  const root = h("section", { class: "pane card", "aria-label": `Model ${id.toUpperCase()}` },
    h("label", { for: `model-${id}` }, id === "a" ? "Model" : "Compare with"), select, error, transcript);

  return {
    root,
    fill(models) {
      const group = (label, rows) => rows.length ? h("optgroup", { label }, rows.map((m) => h("option", { value: m.id, selected: m.id === preset }, m.id))) : "";
      const base = models.filter((m) => m.owned_by === "openft");
      const ckpt = models.filter((m) => m.owned_by !== "openft" && m.id.includes(":ckpt-step-"));
      const tuned = models.filter((m) => m.owned_by !== "openft" && !m.id.includes(":ckpt-step-"));
      select.replaceChildren(group("Base models", base), group("Fine-tuned models", tuned), group("Checkpoints", ckpt));
      if (preset && !models.some((m) => m.id === preset)) showError(error, { message: `Model ${preset} is not available to this key.` });
    },
    clear() { history.length = 0; transcript.replaceChildren(); showError(error, null); },
    async ask(text, system, options, signal) {
      showError(error, null);
      history.push({ role: "user", content: text });
      const reply = h("div", { class: "content" });
      transcript.append(h("li", { class: "user" }, h("strong", {}, "You"), h("div", { class: "content" }, text)),
        h("li", { class: "assistant", "aria-busy": "true" }, h("strong", {}, select.value), reply));
      const item = transcript.lastChild;
      const messages = system ? [{ role: "system", content: system }, ...history] : [...history];
      try {
        const answer = await chatStream({ model: select.value, messages, ...options }, (_d, all) => { reply.textContent = all; }, signal);
        history.push({ role: "assistant", content: answer });
        item.dataset.done = "true";
      } catch (e) {
        history.pop();
        item.dataset.done = "error";
        showError(error, e);
      }
      item.removeAttribute("aria-busy");
    },
  };
}
