// The dashboard's entry: the key prompt, and a router over the URL fragment (#/jobs, #/jobs/ID,
// #/models, #/models/NAME, #/deployments, #/files).

import { apiKey, call, forgetApiKey, setApiKey } from "./api.js";
import { errorBox, fill, h } from "./dom.js";
import { jobPage, jobsPage } from "./jobs.js";
import { deploymentsPage, filesPage, modelPage, modelsPage } from "./registry.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
let current = new AbortController();

function loginPage(message) {
  nav.hidden = true;
  const input = h("input", { type: "password", id: "api-key", autocomplete: "off", placeholder: "maas_…", required: true });
  const form = h("form", { className: "login" },
    h("h1", {}, "Sign in"),
    h("label", { for: "api-key" }, "API key"), input,
    h("button", { type: "submit" }, "Use this key"),
    h("p", { className: "muted" }, "The key stays in this browser tab (session storage) and is sent only in the Authorization header."),
    message ? errorBox(message) : null);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    setApiKey(input.value.trim());
    try {
      await call("/v1/jobs?limit=1");
    } catch (err) {
      forgetApiKey();
      loginPage(err.status === 401 ? "That key was refused." : err);
      return;
    }
    route();
  });
  fill(main, form);
  input.focus();
}

async function route() {
  current.abort();
  current = new AbortController();
  if (!apiKey()) return loginPage();
  nav.hidden = false;
  const [path, query] = (location.hash.slice(1) || "/jobs").split("?");
  const params = new URLSearchParams(query ?? "");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  for (const link of nav.querySelectorAll("a")) {
    link.classList.toggle("active", link.getAttribute("href") === `#/${parts[0]}`);
  }
  fill(main, h("p", { className: "muted" }, "Loading…"));
  try {
    if (parts[0] === "jobs" && parts[1]) await jobPage(main, parts[1], current.signal);
    else if (parts[0] === "models" && parts[1]) await modelPage(main, parts[1]);
    else if (parts[0] === "models") await modelsPage(main);
    else if (parts[0] === "deployments") await deploymentsPage(main, current.signal);
    else if (parts[0] === "files") await filesPage(main);
    else await jobsPage(main, params, current.signal);
  } catch (err) {
    if (err.status === 401) { forgetApiKey(); return loginPage("The key was refused; enter it again."); }
    fill(main, errorBox(err));
  }
}

document.getElementById("logout").addEventListener("click", () => { forgetApiKey(); location.hash = ""; route(); });
window.addEventListener("hashchange", route);
route();
