// Models and their versions (signature, lineage chain), deployments (replicas, state) and files.

import { ApiError, call, listAll } from "./api.js";
import { bytes, fill, h, number, statusBadge, table, when } from "./dom.js";

const enc = encodeURIComponent;

export async function modelsPage(main) {
  const models = await listAll("/v1/models");
  fill(main, h("h1", {}, "Models"), models.length === 0 ? h("p", { className: "muted" }, "No models.") : table(
    ["Model", "Latest version", "Created"],
    models.map((m) => [h("a", { href: `#/models/${enc(m.name)}` }, m.name), m.latest_version ?? "", when(m.created_at)]),
    { "data-testid": "models-table" },
  ));
}

async function deploymentOf(name) {
  try {
    return await call(`/v1/models/${enc(name)}/deployment`);
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) return null;
    throw err;
  }
}

function signatureTable(signature) {
  const rows = [];
  for (const side of ["inputs", "outputs"]) {
    for (const t of signature?.[side] ?? []) rows.push([side.slice(0, -1), t.name, t.datatype, JSON.stringify(t.shape)]);
  }
  return table(["", "Name", "Datatype", "Shape"], rows, { className: "signature" });
}

/** Where a version came from, oldest first: file or training job, each compression, the version. */
async function lineageChain(version, depth = 0) {
  const node = h("a", { href: `#/models/${enc(version.model)}`, className: "node" }, `${version.model} v${version.version}`);
  const lineage = version.lineage ?? {};
  let before = [];
  if (lineage.kind === "training" || lineage.kind === "compression") {
    const job = h("a", { href: `#/jobs/${enc(lineage.source_job_id ?? version.source_job_id)}`, className: "node" },
      `${lineage.kind} job`);
    const parent = lineage.parent ?? {};
    if (parent.model && depth < 8) {
      try {
        before = [...(await lineageChain(await call(`/v1/models/${enc(parent.model)}/versions/${parent.version}`), depth + 1)), job];
      } catch {
        before = [h("span", { className: "node" }, `${parent.model} v${parent.version}`), job];
      }
    } else if (parent.file_id) {
      before = [h("span", { className: "node" }, `file ${parent.file_id}`), job];
    } else {
      before = [job];
    }
  } else if (lineage.source?.file_id) {
    before = [h("span", { className: "node" }, `uploaded ${lineage.source.filename ?? lineage.source.file_id}`)];
  }
  return [...before, node];
}

function chain(nodes) {
  const out = [];
  nodes.forEach((n, i) => { if (i) out.push(h("span", { className: "arrow" }, "→")); out.push(n); });
  return h("div", { className: "lineage", "data-testid": "lineage" }, out);
}

export async function modelPage(main, name) {
  const [versions, deployment] = await Promise.all([call(`/v1/models/${enc(name)}/versions`), deploymentOf(name)]);
  const cards = [];
  for (const v of [...versions.data].reverse()) {
    const nodes = await lineageChain(v);
    if (deployment && deployment.version === v.version) {
      nodes.push(h("a", { href: "#/deployments", className: "node deployed" }, `deployed (${deployment.status})`));
    }
    cards.push(h("section", { className: "card", "data-testid": `version-${v.version}` },
      h("h2", {}, `Version ${v.version}`),
      chain(nodes),
      h("h3", {}, "Signature"), signatureTable(v.signature),
      Object.keys(v.metrics ?? {}).length ? [h("h3", {}, "Metrics"), h("dl", { className: "facts" },
        Object.entries(v.metrics).map(([k, x]) => [h("dt", {}, k), h("dd", {}, number(x))]))] : null,
      h("p", { className: "muted" }, `ONNX ${bytes(v.artifact?.bytes)} · registered ${when(v.created_at)}`)));
  }
  fill(main, h("h1", {}, "Model ", h("span", { className: "name" }, name)), cards);
}

const STATS_WINDOW_MIN = 5;
const STATS_REFRESH_MS = 5000;

function fixed(x, suffix = "") {
  return x === null || x === undefined ? "–" : `${x.toFixed(2)}${suffix}`;
}

/** One row per deployment: the last minutes of synchronous traffic (GET /v1/deployments/stats). */
function statsTable(stats) {
  return table(
    ["Model", "Requests/min", "Requests", "Error rate", "p50 latency", "p99 latency", "Mean batch", "Max batch"],
    stats.data.map((s) => [
      h("a", { href: `#/models/${enc(s.model)}` }, s.model),
      h("span", { "data-stat": "requests_per_minute" }, fixed(s.requests_per_minute)),
      h("span", { "data-stat": "requests" }, number(s.requests)),
      h("span", { "data-stat": "error_rate" }, s.error_rate === null ? "–" : `${(100 * s.error_rate).toFixed(1)}%`),
      h("span", { "data-stat": "latency_p50_ms" }, fixed(s.latency_p50_ms, " ms")),
      h("span", { "data-stat": "latency_p99_ms" }, fixed(s.latency_p99_ms, " ms")),
      h("span", { "data-stat": "mean_batch_size" }, fixed(s.mean_batch_size)),
      h("span", { "data-stat": "max_batch_size" }, s.max_batch_size ?? "–"),
    ]),
    { "data-testid": "deployment-stats" },
  );
}

export async function deploymentsPage(main, signal) {
  const models = await listAll("/v1/models");
  const deployments = (await Promise.all(models.map((m) => deploymentOf(m.name)))).filter(Boolean);
  const traffic = h("div", { "data-testid": "traffic" });
  fill(main, h("h1", {}, "Deployments"),
    deployments.length === 0 ? h("p", { className: "muted" }, "No deployments.") : table(
      ["Model", "Version", "State", "Replicas", "Batching", "Updated"],
      deployments.map((d) => [
        h("a", { href: `#/models/${enc(d.model)}` }, d.model),
        d.version,
        statusBadge(d.status),
        d.replicas.length === 0 ? h("span", { className: "muted" }, "none") : h("ul", { className: "replicas" },
          d.replicas.map((r) => h("li", { "data-replica": r.status },
            `${r.model_server} · v${r.version} · `, statusBadge(r.status), r.error ? ` ${r.error}` : ""))),
        `max batch ${d.max_batch_size}, delay ${d.max_queue_delay_us} µs, queue ${d.max_queue_size}`,
        when(d.updated_at),
      ]),
      { "data-testid": "deployments-table" },
    ),
    deployments.length === 0 ? null : [h("h2", {}, `Traffic, last ${STATS_WINDOW_MIN} minutes`), traffic]);
  if (deployments.length === 0) return;

  async function refresh() {
    const stats = await call(`/v1/deployments/stats?window_minutes=${STATS_WINDOW_MIN}`);
    fill(traffic, statsTable(stats),
      h("p", { className: "muted note" }, "Synchronous requests (REST and gRPC) as the API recorded them; latency " +
        `from request to answer of the succeeded ones. Updated ${new Date().toLocaleTimeString()}, every ` +
        `${STATS_REFRESH_MS / 1000} s.`));
  }
  await refresh();
  const timer = setInterval(() => refresh().catch(() => {}), STATS_REFRESH_MS);
  signal?.addEventListener("abort", () => clearInterval(timer));
}

export async function filesPage(main) {
  const files = await listAll("/v1/files");
  fill(main, h("h1", {}, "Files"), files.length === 0 ? h("p", { className: "muted" }, "No files.") : table(
    ["File", "Name", "Purpose", "Format", "Size", "Uploaded"],
    files.map((f) => [h("span", { className: "mono" }, f.id), f.filename, f.purpose, f.format, bytes(f.bytes), when(f.created_at)]),
    { "data-testid": "files-table" },
  ));
}
