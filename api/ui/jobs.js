// The jobs list (filters, progress, duration) and one job: live curves and events over SSE,
// artifacts with downloads, the compression report, the error with its log tail.

import { call, downloadArtifact, streamEvents } from "./api.js";
import { barChart, lineChart } from "./charts.js";
import { bytes, duration, errorBox, fill, h, number, progressBar, statusBadge, table, when } from "./dom.js";

const STATUSES = ["", "queued", "running", "succeeded", "failed", "canceled"];
const TYPES = ["", "training", "compression", "batch_inference"];
const CURVES = { loss: ["loss", "val_loss"], accuracy: ["accuracy", "val_accuracy"] };

function jobName(job) {
  return job.metadata?.name ?? "";
}

export async function jobsPage(main, params, signal) {
  const status = h("select", { "data-testid": "filter-status", "aria-label": "status" },
    STATUSES.map((s) => h("option", { value: s }, s || "any status")));
  const type = h("select", { "data-testid": "filter-type", "aria-label": "type" },
    TYPES.map((t) => h("option", { value: t }, t || "any type")));
  status.value = params.get("status") ?? "";
  type.value = params.get("type") ?? "";
  const body = h("div", {});
  const go = () => {
    const query = new URLSearchParams();
    if (status.value) query.set("status", status.value);
    if (type.value) query.set("type", type.value);
    location.hash = `#/jobs${query.size ? `?${query}` : ""}`;
  };
  status.addEventListener("change", go);
  type.addEventListener("change", go);
  fill(main, h("h1", {}, "Jobs"), h("div", { className: "filters" }, status, type), body);

  async function refresh() {
    const query = new URLSearchParams({ limit: "100" });
    if (status.value) query.set("status", status.value);
    if (type.value) query.set("type", type.value);
    const page = await call(`/v1/jobs?${query}`);
    fill(body, page.data.length === 0 ? h("p", { className: "muted" }, "No jobs.") : table(
      ["Job", "Name", "Type", "Status", "Progress", "Duration", "Created"],
      page.data.map((job) => [
        h("a", { href: `#/jobs/${job.id}` }, job.id),
        jobName(job),
        job.type,
        statusBadge(job.status),
        progressBar(job.status === "succeeded" ? 1 : job.progress?.fraction),
        duration(job.started_at, job.finished_at),
        when(job.created_at),
      ]),
      { "data-testid": "jobs-table" },
    ));
  }
  await refresh();
  const timer = setInterval(() => refresh().catch(() => {}), 3000);
  signal.addEventListener("abort", () => clearInterval(timer));
}

function section(title, ...children) {
  return h("section", {}, h("h2", {}, title), ...children);
}

function summary(job) {
  const rows = [
    ["Status", statusBadge(job.status)],
    ["Type", job.type],
    ["Progress", h("span", { "data-testid": "job-progress" }, progressBar(job.status === "succeeded" ? 1 : job.progress?.fraction),
      ` step ${job.progress?.step ?? 0}${job.progress?.total_steps ? ` of ${job.progress.total_steps}` : ""}`)],
    ["Duration", duration(job.started_at, job.finished_at)],
    ["Created", when(job.created_at)],
    ["Attempts", `${job.attempts} of ${job.max_attempts}`],
  ];
  for (const [k, v] of Object.entries(job.metadata ?? {})) rows.push([`metadata.${k}`, v]);
  for (const [k, v] of Object.entries(job.metrics ?? {})) rows.push([k, number(v)]);
  return h("dl", { className: "facts" }, rows.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

function errorSection(job, logLines) {
  if (!job.error) return null;
  const tail = Array.isArray(job.error.log_tail) && job.error.log_tail.length ? job.error.log_tail : logLines.slice(-40);
  return section("Error",
    h("p", { className: "error", "data-testid": "job-error" }, `${job.error.code}: ${job.error.message}`),
    tail.length ? h("pre", { className: "log", "data-testid": "log-tail" }, tail.join("\n")) : null);
}

function artifactsSection(artifacts) {
  if (!artifacts.length) return section("Artifacts", h("p", { className: "muted" }, "None yet."));
  return section("Artifacts", table(["Name", "Kind", "Size", "Created", ""],
    artifacts.map((a) => [
      a.name, a.kind, bytes(a.bytes), when(a.created_at),
      a.deleted_at ? h("span", { className: "muted" }, `deleted: ${a.deleted_reason ?? ""}`)
        : h("button", { type: "button", "data-artifact": a.id, onclick: (e) => {
          downloadArtifact(a.id).catch((err) => e.target.after(errorBox(err)));
        } }, "Download"),
    ]), { "data-testid": "artifacts" }));
}

const REPORT_COLUMNS = [
  ["stage", "Stage", String], ["kind", "Kind", String], ["parameters", "Parameters", number],
  ["sparsity", "Sparsity", (x) => (x == null ? "" : `${(100 * x).toFixed(1)}%`)],
  ["onnx_bytes", "ONNX", bytes], ["onnx_gzip_bytes", "gzip", bytes], ["accuracy", "Accuracy", number],
  ["mean_cosine", "Mean cosine", number], ["latency_p50_ms", "p50 ms", number],
  ["throughput_items_per_s", "Items/s", number],
];

function reportSection(report) {
  if (!report?.stages?.length) return null;
  const stages = report.stages;
  const labels = stages.map((s) => s.stage);
  const quality = report.metric === "accuracy" ? "accuracy" : "mean_cosine";
  const overall = Object.entries(report.overall ?? {}).filter(([, v]) => v !== null);
  return section("Compression report",
    table(REPORT_COLUMNS.map((c) => c[1]), stages.map((s) => REPORT_COLUMNS.map(([key, , f]) => f(s[key]))),
      { "data-testid": "report-table" }),
    h("div", { className: "charts", "data-testid": "report-charts" },
      barChart("ONNX bytes", labels, stages.map((s) => s.onnx_bytes), (v) => bytes(v)),
      barChart(quality.replace("_", " "), labels, stages.map((s) => s[quality])),
      barChart("latency p50 (ms)", labels, stages.map((s) => s.latency_p50_ms))),
    overall.length ? h("dl", { className: "facts" }, overall.map(([k, v]) => [h("dt", {}, k), h("dd", {}, number(v))])) : null);
}

export async function jobPage(main, id, signal) {
  let job = await call(`/v1/jobs/${encodeURIComponent(id)}`);
  const head = h("div", {});
  const charts = h("div", { className: "charts" });
  const curves = { loss: lineChart("loss"), accuracy: lineChart("accuracy") };
  curves.loss.element.setAttribute("data-testid", "loss-chart");
  curves.accuracy.element.setAttribute("data-testid", "accuracy-chart");
  charts.append(curves.loss.element, curves.accuracy.element);
  const events = h("tbody", {});
  const rest = h("div", {});
  const logLines = [];
  fill(main,
    h("h1", {}, "Job ", h("span", { className: "mono" }, job.id), jobName(job) ? h("span", { className: "name", "data-testid": "job-name" }, jobName(job)) : null),
    head, section("Curves", charts), rest,
    section("Events", h("div", { className: "scroll" }, h("table", { "data-testid": "events" },
      h("thead", {}, h("tr", {}, ["Time", "Type", "Message", "Data"].map((x) => h("th", {}, x)))), events))));

  async function renderRest() {
    const artifacts = (await call(`/v1/jobs/${encodeURIComponent(id)}/artifacts`)).data;
    fill(head, summary(job));
    fill(rest, errorSection(job, logLines), reportSection(job.result?.report), artifactsSection(artifacts));
  }
  await renderRest();

  let refreshing = null;
  const refreshSoon = () => {
    refreshing ??= setTimeout(async () => {
      refreshing = null;
      job = await call(`/v1/jobs/${encodeURIComponent(id)}`);
      await renderRest();
    }, 300);
  };
  const onEvent = (event) => {
    if (event.type === "progress") {
      const step = event.data.step;
      for (const [chart, keys] of Object.entries(CURVES)) {
        for (const key of keys) curves[chart].add(key, step, event.data[key]);
      }
    }
    if (event.type === "log") logLines.push(event.message);
    events.prepend(h("tr", { className: `level-${event.level}` },
      h("td", {}, when(event.created_at)), h("td", {}, event.type), h("td", {}, event.message),
      h("td", { className: "mono" }, JSON.stringify(event.data))));
    while (events.childElementCount > 300) events.lastElementChild.remove();
    if (event.type !== "progress" || !refreshing) refreshSoon();
  };
  streamEvents(id, onEvent, signal).then(refreshSoon).catch((err) => {
    if (!signal.aborted) rest.prepend(errorBox(err));
  });
}
