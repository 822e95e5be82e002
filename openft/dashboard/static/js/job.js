// One job: status timeline, live charts per step from the event stream, progress and ETA, hyperparameters,
// checkpoints with their metrics, the results file, the event log, and pause / resume / cancel.

import { api, download, followEvents } from "./api.js";
import { drawChart } from "./chart.js";
import { errorBox, h, hyperparametersOf, inFuture, methodOf, showError, statusBadge, when } from "./ui.js";

const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

// Which figures each method plots (a chart shows once one of its series has a point).
const CHARTS = {
  supervised: [
    ["Loss", ["train_loss", "valid_loss", "full_valid_loss"]],
    ["Accuracy", ["train_mean_token_accuracy", "valid_mean_token_accuracy", "full_valid_mean_token_accuracy"]],
  ],
  dpo: [
    ["Loss", ["train_loss", "valid_loss", "full_valid_loss"]],
    ["Reward margin", ["train_reward_margin", "valid_reward_margin", "full_valid_reward_margin"]],
    ["Reward accuracy", ["train_reward_accuracy", "valid_reward_accuracy", "full_valid_reward_accuracy"]],
  ],
  reinforcement: [
    ["Reward", ["train_mean_reward", "full_valid_mean_reward"]],
    ["Loss", ["train_loss"]],
  ],
};

/** The chart's title names the figure; its legend says whose: training, one validation batch, or the whole set. */
const seriesLabel = (key) => (key.startsWith("full_valid") ? "full validation set" : key.startsWith("valid") ? "validation" : "training");

// Event messages that mark a status change, for the timeline.
const MARKS = [
  [/^Created fine-tuning job/, "validating_files"],
  [/^Files validated, moving job to queued/, "queued"],
  [/^Fine-tuning job started/, "running"],
  [/^Job paused/, "paused"],
  [/^Job resumed, moving job to queued/, "queued"],
  [/^Job resumed, validating files/, "validating_files"],
  [/^Job cancelled/, "cancelled"],
  [/^The job has successfully completed/, "succeeded"],
];

export function jobPage(root, jobId) {
  const ctl = new AbortController();
  const s = { job: null, steps: new Map(), total: 0, marks: [], events: [] };
  const el = layout(jobId);
  root.append(el.root);

  const onEvent = (ev) => { record(s, el, ev); scheduleDraw(); };
  let pending = false;
  const scheduleDraw = () => {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => { pending = false; drawCharts(el, s); progress(el, s); timeline(el, s); });
  };

  async function refresh() {
    try {
      const [job, ckpts] = await Promise.all([api(`/fine_tuning/jobs/${jobId}`), api(`/fine_tuning/jobs/${jobId}/checkpoints?limit=100`)]);
      s.job = job;
      details(el, job);
      checkpoints(el, ckpts.data);
      progress(el, s);
      timeline(el, s);
      showError(el.error, null);
    } catch (e) {
      s.gone = e.status === 404 || e.status === 401;
      showError(el.error, e);
    }
  }

  for (const action of ["pause", "resume", "cancel"]) {
    el.buttons[action].addEventListener("click", async () => {
      showError(el.actionError, null);
      try {
        s.job = await api(`/fine_tuning/jobs/${jobId}/${action}`, { method: "POST" });
        details(el, s.job);
      } catch (e) { showError(el.actionError, e); }
    });
  }

  (async () => {
    await refresh();
    drawCharts(el, s);
    const poll = setInterval(() => { if (!s.gone && !TERMINAL.has(s.job?.status)) refresh(); }, 1500);
    ctl.signal.addEventListener("abort", () => clearInterval(poll));
    let lastRead = false; // one more read of the events after the job is seen terminal, for its final events
    const isDone = async () => {
      if (!TERMINAL.has(s.job?.status)) return false;
      if (lastRead) return true;
      lastRead = true;
      return false;
    };
    await followEvents(jobId, onEvent, { signal: ctl.signal, isDone });
    await refresh();
  })();
  return () => ctl.abort();
}

/** Take in one event: a metrics event adds its step's figures, a status message a timeline mark, all the log. */
function record(s, el, ev) {
  s.events.push(ev);
  if (ev.type === "metrics" && ev.data?.step) {
    s.steps.set(ev.data.step, ev.data); // a step run again after a resume keeps its latest figures
    s.total = ev.data.total_steps || s.total;
  }
  const mark = MARKS.find(([re]) => re.test(ev.message));
  if (mark) s.marks.push([mark[1], ev.created_at]);
  el.log.prepend(h("li", { class: `level-${ev.level}` }, h("time", {}, when(ev.created_at)), " ", ev.message));
}

function drawCharts(el, s) {
  const specs = CHARTS[s.job ? methodOf(s.job) : "supervised"] || CHARTS.supervised;
  el.charts.replaceChildren(...specs.map(([title, keys]) => {
    const series = keys.map((k) => ({
      name: seriesLabel(k),
      points: [...s.steps].filter(([, d]) => typeof d[k] === "number").map(([step, d]) => [step, d[k]]),
    }));
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("class", "chart");
    svg.dataset.chart = title.toLowerCase().replace(/ /g, "-");
    drawChart(svg, title, series, s.total);
    return h("figure", {}, h("figcaption", {}, title), svg);
  }));
}

function layout(jobId) {
  const buttons = {
    pause: h("button", { type: "button", id: "pause" }, "Pause"),
    resume: h("button", { type: "button", id: "resume" }, "Resume"),
    cancel: h("button", { type: "button", id: "cancel", class: "danger" }, "Cancel"),
  };
  const el = {
    buttons, status: h("span", { id: "job-status" }), error: errorBox("job-error"), actionError: errorBox("action-error"),
    jobError: h("p", { class: "error", role: "alert", id: "job-failure", hidden: true }),
    facts: h("dl", { class: "facts", id: "job-facts" }), hyper: h("dl", { class: "facts", id: "hyperparameters" }),
    charts: h("div", { class: "charts", id: "charts" }), log: h("ol", { class: "log", id: "event-log" }),
    ckpts: h("tbody", { id: "checkpoints" }), timeline: h("ol", { class: "timeline", id: "timeline" }),
    progress: h("div", { id: "progress" }), results: h("div", { id: "results" }),
  };
  el.root = h("div", { class: "job" },
    h("div", { class: "title-row" }, h("h1", {}, "Job ", h("span", { class: "mono" }, jobId)), el.status,
      h("div", { class: "actions", role: "group", "aria-label": "Job actions" }, buttons.pause, buttons.resume, buttons.cancel)),
    el.error, el.actionError, el.jobError,
    h("section", { "aria-label": "Status timeline" }, el.timeline),
    h("div", { class: "columns" },
      h("section", { class: "main-col" }, h("h2", {}, "Metrics"), el.progress, el.charts),
      h("section", { class: "side-col" }, h("h2", {}, "Details"), el.facts, h("h3", {}, "Hyperparameters"), el.hyper, el.results)),
    h("section", {}, h("h2", {}, "Checkpoints"), h("div", { class: "table-wrap" }, h("table", {},
      h("thead", {}, h("tr", {}, ["Step", "Model", "Created", "Metrics", ""].map((c) => h("th", { scope: "col" }, c)))), el.ckpts))),
    h("section", {}, h("h2", {}, "Events"), el.log));
  return el;
}

function details(el, job) {
  if (TERMINAL.has(job.status)) showError(el.actionError, null); // the actions are over: so is what they answered
  el.status.replaceChildren(statusBadge(job.status));
  el.buttons.pause.disabled = TERMINAL.has(job.status);
  el.buttons.resume.disabled = TERMINAL.has(job.status);
  el.buttons.cancel.disabled = TERMINAL.has(job.status);
  el.jobError.hidden = !job.error;
  el.jobError.replaceChildren(job.error ? `Failed: ${job.error.message}${job.error.param ? ` (${job.error.param})` : ""}` : "");
  const ft = job.fine_tuned_model;
  const facts = [
    ["Base model", job.model], ["Method", methodOf(job)],
    ["Fine-tuned model", ft ? h("a", { href: `#/playground?model=${encodeURIComponent(ft)}&compare=${encodeURIComponent(job.model)}` }, ft) : "—"],
    ["Created", when(job.created_at)], ["Finished", when(job.finished_at)],
    ["Training file", job.training_file], ["Validation file", job.validation_file || "—"],
    ["Trained tokens", job.trained_tokens ?? "—"], ["Seed", job.seed], ["Suffix", job.user_provided_suffix || job.suffix || "—"],
    ["Metadata", job.metadata ? Object.entries(job.metadata).map(([k, v]) => `${k}=${v}`).join(", ") : "—"],
  ];
  el.facts.replaceChildren(...facts.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
  el.hyper.replaceChildren(...Object.entries(hyperparametersOf(job)).flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, String(v))]));
  if (job.result_files?.length && !el.results.dataset.file) {
    el.results.dataset.file = job.result_files[0];
    const btn = h("button", { type: "button", id: "download-results" }, "Download results (CSV)");
    btn.addEventListener("click", () => download(`/files/${job.result_files[0]}/content`, `${job.id}-results.csv`).catch((e) => showError(el.actionError, e)));
    el.results.replaceChildren(h("h3", {}, "Results"), btn);
  }
}

function progress(el, s) {
  const last = Math.max(0, ...s.steps.keys());
  if (!s.total) { el.progress.replaceChildren(); return; }
  const pct = Math.floor((100 * last) / s.total);
  let eta = "";
  if (s.job?.estimated_finish) eta = `ETA ${inFuture(s.job.estimated_finish)}`;
  else if (s.job && ["running", "queued"].includes(s.job.status)) eta = estimate(s);
  el.progress.replaceChildren(h("progress", { max: String(s.total), value: String(last), "aria-label": "Training progress" }),
    h("span", { id: "step-count" }, ` Step ${last} of ${s.total} (${pct}%)`), eta ? h("span", { id: "eta" }, ` · ${eta}`) : "");
}

/** ETA from the pace of the metrics events seen so far (when the server gives no estimated_finish). */
function estimate(s) {
  const times = s.events.filter((e) => e.type === "metrics").map((e) => [e.data.step, e.created_at]);
  if (times.length < 2) return "";
  const [[s0, t0], [s1, t1]] = [times[0], times[times.length - 1]];
  if (s1 <= s0 || t1 <= t0) return "";
  return `ETA ${inFuture(t1 + ((s.total - s1) * (t1 - t0)) / (s1 - s0))}`;
}

function timeline(el, s) {
  const marks = [...s.marks];
  const status = s.job?.status;
  if (status && (!marks.length || marks[marks.length - 1][0] !== status)) marks.push([status, s.job.finished_at || null]);
  el.timeline.replaceChildren(...marks.map(([st, t], i) => h("li", { class: i === marks.length - 1 ? "current" : "", "aria-current": i === marks.length - 1 ? "step" : null },
    statusBadge(st), t ? h("time", {}, when(t)) : "")));
}

function checkpoints(el, rows) {
  el.ckpts.replaceChildren(...rows.map((c) => h("tr", { "data-checkpoint": c.fine_tuned_model_checkpoint },
    h("td", {}, String(c.step_number)),
    h("td", { class: "mono" }, c.fine_tuned_model_checkpoint),
    h("td", {}, when(c.created_at)),
    h("td", { class: "metrics" }, Object.entries(c.metrics).filter(([, v]) => v !== null).map(([k, v]) => `${k}=${+v.toFixed(4)}`).join(", ")),
    h("td", {}, h("a", { href: `#/playground?model=${encodeURIComponent(c.fine_tuned_model_checkpoint)}` }, "Try in playground")))));
  if (!rows.length) el.ckpts.append(h("tr", {}, h("td", { colspan: "5", class: "muted" }, "No checkpoints yet.")));
}
