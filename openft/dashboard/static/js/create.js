// Create a job: upload the training (and validation) file, pick the method, base model, hyperparameters (empty
// fields mean "auto"), suffix and metadata, check the file with a dry run, start.

import { ApiError, api, uploadFile } from "./api.js";
import { errorBox, h, showError } from "./ui.js";

const HYPER = {
  supervised: ["n_epochs", "batch_size", "learning_rate_multiplier"],
  dpo: ["n_epochs", "batch_size", "learning_rate_multiplier", "beta"],
  reinforcement: ["n_epochs", "batch_size", "learning_rate_multiplier", "compute_multiplier", "eval_interval", "eval_samples", "reasoning_effort"],
};

export function createPage(root) {
  const training = h("input", { id: "training-file", type: "file", accept: ".jsonl,application/jsonl", required: true });
  const validation = h("input", { id: "validation-file", type: "file", accept: ".jsonl,application/jsonl" });
  const method = h("select", { id: "method" }, Object.keys(HYPER).map((m) => h("option", { value: m }, m)));
  const model = h("select", { id: "base-model", required: true });
  const suffix = h("input", { id: "suffix", maxlength: "64", placeholder: "optional" });
  const metadata = h("input", { id: "metadata", placeholder: "key=value, key2=value2" });
  const grader = h("textarea", { id: "grader", rows: "5", placeholder: '{"type": "string_check", "name": "exact", "input": "{{sample.output_text}}", "reference": "{{item.answer}}", "operation": "eq"}' });
  const graderRow = h("div", { class: "field", hidden: true }, h("label", { for: "grader" }, "Grader (JSON, reinforcement only)"), grader);
  const hyper = h("fieldset", { id: "hyperparameters" });
  const error = errorBox("create-error");
  const report = h("div", { id: "dry-run", "aria-live": "polite" });
  const check = h("button", { type: "button", id: "check-file" }, "Check file");
  const submit = h("button", { type: "submit", id: "start-job" }, "Start job");

  const drawHyper = () => {
    hyper.replaceChildren(h("legend", {}, "Hyperparameters (empty = auto)"),
      ...HYPER[method.value].map((k) => h("div", { class: "field" }, h("label", { for: `hp-${k}` }, k),
        h("input", { id: `hp-${k}`, name: k, placeholder: "auto", inputmode: k === "reasoning_effort" ? "text" : "decimal" }))));
    graderRow.hidden = method.value !== "reinforcement";
  };
  method.addEventListener("change", drawHyper);
  drawHyper();
  api("/models").then((list) => {
    const bases = list.data.filter((m) => m.owned_by === "openft");
    const tuned = list.data.filter((m) => m.owned_by !== "openft");
    model.replaceChildren(h("optgroup", { label: "Base models" }, bases.map((m) => h("option", { value: m.id }, m.id))),
      tuned.length ? h("optgroup", { label: "Fine-tuned models and checkpoints" }, tuned.map((m) => h("option", { value: m.id }, m.id))) : "");
  }).catch((e) => showError(error, e));

  const busy = (on, text = "") => { check.disabled = submit.disabled = on; report.replaceChildren(text); };

  async function request() {
    if (!training.files[0]) throw new ApiError(0, { error: { message: "Choose a training file." } });
    const body = { model: model.value, training_file: (await uploadFile(training.files[0])).id };
    if (validation.files[0]) body.validation_file = (await uploadFile(validation.files[0])).id;
    if (suffix.value.trim()) body.suffix = suffix.value.trim();
    const meta = parseMetadata(metadata.value);
    if (meta) body.metadata = meta;
    const hp = {};
    for (const input of hyper.querySelectorAll("input")) {
      const v = input.value.trim();
      if (v) hp[input.name] = v === "auto" || isNaN(+v) ? v : +v;
    }
    const spec = { hyperparameters: hp };
    if (method.value === "reinforcement") spec.grader = parseGrader(grader.value);
    body.method = { type: method.value, [method.value]: spec };
    return body;
  }

  /** The dry run; null when this server has none (it rejects the dry_run argument). */
  async function dryRun(body) {
    try {
      return await api("/fine_tuning/jobs", { method: "POST", body: { ...body, dry_run: true } });
    } catch (e) {
      if (e.status === 400 && e.param === "dry_run") return null;
      throw e;
    }
  }

  check.addEventListener("click", async () => {
    showError(error, null);
    busy(true, "Uploading and checking…");
    try {
      const result = await dryRun(await request());
      busy(false);
      report.replaceChildren(result ? summary(result) : "This server cannot check a file without starting a job; problems show when the job starts.");
    } catch (e) { busy(false); showError(error, e); }
  });

  const form = h("form", { id: "create-form", class: "card" },
    h("h1", {}, "Create a fine-tuning job"),
    h("div", { class: "grid2" },
      h("div", { class: "field" }, h("label", { for: "training-file" }, "Training file (JSONL)"), training),
      h("div", { class: "field" }, h("label", { for: "validation-file" }, "Validation file (optional)"), validation),
      h("div", { class: "field" }, h("label", { for: "method" }, "Method"), method),
      h("div", { class: "field" }, h("label", { for: "base-model" }, "Base model"), model),
      h("div", { class: "field" }, h("label", { for: "suffix" }, "Suffix"), suffix),
      h("div", { class: "field" }, h("label", { for: "metadata" }, "Metadata"), metadata)),
    graderRow, hyper, error, report, h("div", { class: "actions" }, check, submit));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    showError(error, null);
    busy(true, "Uploading and checking…");
    try {
      const body = await request();
      const checked = await dryRun(body);
      if (checked) report.replaceChildren(summary(checked));
      const job = await api("/fine_tuning/jobs", { method: "POST", body });
      if (!checked) {
        busy(true, "Validating the files…");
        const failed = await failedValidation(job.id);
        if (failed) { busy(false); showError(error, { message: failed }); return; }
      }
      location.hash = `#/jobs/${job.id}`;
    } catch (err) { busy(false); showError(error, err); }
  });
  root.append(form);
}

/** Without a dry run, a bad file fails the new job within moments: wait for validation and return its error. */
async function failedValidation(jobId) {
  for (let i = 0; i < 30; i++) {
    const job = await api(`/fine_tuning/jobs/${jobId}`);
    if (job.status === "failed") return `${job.error?.message || "The job failed."} (job ${jobId})`;
    if (job.status !== "validating_files") return null;
    await new Promise((r) => setTimeout(r, 300));
  }
  return null;
}

function summary(r) {
  const f = r.training_file || {};
  const rows = [["Examples", f.n_examples], ["Tokens", f.n_tokens], ["Truncated examples", f.n_truncated],
    ["Total steps", r.total_steps], ["Estimated time", r.estimated_seconds != null ? `${Math.round(r.estimated_seconds)} s` : null]];
  return h("div", { class: "ok" }, h("p", {}, "The file is valid."),
    h("dl", { class: "facts" }, rows.filter(([, v]) => v != null).flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, String(v))])));
}

function parseMetadata(text) {
  const pairs = text.split(",").map((p) => p.trim()).filter(Boolean);
  if (!pairs.length) return null;
  return Object.fromEntries(pairs.map((p) => {
    const i = p.indexOf("=");
    if (i < 1) throw new ApiError(0, { error: { message: `Metadata "${p}" is not key=value.`, param: "metadata" } });
    return [p.slice(0, i).trim(), p.slice(i + 1).trim()];
  }));
}

function parseGrader(text) {
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new ApiError(0, { error: { message: `The grader is not valid JSON: ${e.message}`, param: "grader" } });
  }
}
