// The one way the dashboard talks to the platform: the same authenticated /v1 API as every client.
// The key lives in sessionStorage (this tab, until it closes) and travels only in the Authorization
// header, never in a URL.

const KEY = "maas.api_key";

export function apiKey() { return sessionStorage.getItem(KEY); }
export function setApiKey(key) { sessionStorage.setItem(KEY, key); }
export function forgetApiKey() { sessionStorage.removeItem(KEY); }

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem?.detail || problem?.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

function headers(extra = {}) {
  return { Authorization: `Bearer ${apiKey()}`, ...extra };
}

/** GET (or another method on) an API path; the parsed JSON, or an ApiError with the problem. */
export async function call(path, { method = "GET", body } = {}) {
  const response = await fetch(path, {
    method,
    headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }),
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

/** Every item of a cursor-paged list, up to ``most``. */
export async function listAll(path, most = 500) {
  const items = [];
  let after = null;
  while (items.length < most) {
    const sep = path.includes("?") ? "&" : "?";
    const page = await call(`${path}${sep}limit=100${after ? `&after=${encodeURIComponent(after)}` : ""}`);
    items.push(...page.data);
    if (!page.has_more) break;
    after = page.next_cursor;
  }
  return items;
}

/**
 * A job's events as Server-Sent Events, read with fetch() so the key goes in a header (EventSource
 * cannot send one). Calls ``onEvent(event)`` for each; resumes with Last-Event-ID after a dropped
 * connection; returns when the stream ends (the job ended) or ``signal`` aborts it.
 */
export async function streamEvents(jobId, onEvent, signal) {
  let lastId = null;
  for (let attempt = 0; !signal.aborted; attempt += 1) {
    try {
      const response = await fetch(`/v1/jobs/${encodeURIComponent(jobId)}/events`, {
        headers: headers({ Accept: "text/event-stream", ...(lastId ? { "Last-Event-ID": lastId } : {}) }),
        signal,
      });
      if (!response.ok) throw new ApiError(response.status, await response.json().catch(() => null));
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const frame = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const fields = {};
          for (const line of frame.split("\n")) {
            if (line.startsWith(":")) continue;
            const colon = line.indexOf(": ");
            if (colon > 0) fields[line.slice(0, colon)] = line.slice(colon + 2);
          }
          if (fields.data) {
            lastId = fields.id;
            onEvent(JSON.parse(fields.data));
          }
        }
      }
    } catch (err) {
      if (signal.aborted || (err instanceof ApiError && err.status < 500)) throw err;
      await new Promise((resolve) => setTimeout(resolve, Math.min(5000, 500 * 2 ** attempt)));
    }
  }
}

/** Download an artifact: ask the API for its presigned URL, then let the browser fetch it. */
export async function downloadArtifact(artifactId) {
  const artifact = await call(`/v1/artifacts/${encodeURIComponent(artifactId)}`);
  const link = document.createElement("a");
  link.href = artifact.download_url;
  link.download = artifact.name;
  link.rel = "noopener";
  document.body.append(link);
  link.click();
  link.remove();
}
