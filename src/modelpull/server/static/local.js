"use strict";
// "On this machine": the models in the server's folders (GET /local-models), with verify and
// delete. It follows the page's event stream through the `modelpull:*` DOM events app.js
// re-dispatches: `ready` (the page is unlocked), `job` (a download completed: list again),
// `verify` (a verification's progress and verdict), `local-model-removed`.
// Server data is only ever written with textContent.
(() => {
  const KEY_STORAGE = "modelpull.apiKey";
  const PROVIDERS = { url: "URL", huggingface: "Hugging Face", ollama: "Ollama" };
  const state = { models: [], verifications: new Map(), confirming: null, loading: null };
  const $ = (id) => document.getElementById(id);

  const formatBytes = (count) => window.modelpullFormatBytes(count);  // app.js's, loaded first

  function headers() {
    let key = null;
    try { key = sessionStorage.getItem(KEY_STORAGE); } catch (_) { /* storage disabled */ }
    return key ? { Authorization: `Bearer ${key}` } : {};
  }

  async function call(method, path) {
    const response = await fetch(path, { method, headers: headers() });
    let body = null;
    try { body = await response.json(); } catch (_) { /* no JSON */ }
    if (!response.ok) {
      const message = body && body.error && body.error.message;
      throw new Error(message || `The server answered HTTP ${response.status}`);
    }
    return body;
  }

  const modelPath = (id) => `/local-models/${encodeURIComponent(id)}`;

  async function refresh() {
    const loading = call("GET", "/local-models");
    state.loading = loading;
    try {
      const summary = await loading;
      if (state.loading !== loading) return;
      state.models = summary.models;
      renderSummary(summary);
      render();
      $("local-error").textContent = "";
    } catch (error) {
      $("local-error").textContent = `Could not list the models on this machine: ${error.message}`;
    }
  }

  function renderSummary(summary) {
    const disk = summary.disks[0];
    const free = disk ? `, ${formatBytes(disk.free)} free of ${formatBytes(disk.total)}` : "";
    const count = summary.models.length;
    $("local-summary").textContent =
      `${count} item${count === 1 ? "" : "s"}, ${formatBytes(summary.size_on_disk)} on disk${free}`;
  }

  function statusText(model) {
    const job = state.verifications.get(model.id);
    if (job && job.status === "verifying") return [`Verifying… ${Math.floor(job.percent)}%`, "state-busy"];
    if (job && job.status === "completed") {
      const bad = job.results.filter((r) => r.status === "corrupt" || r.status === "missing");
      if (bad.length) return [`Verify failed: ${bad.map((r) => `${r.name} ${r.status}`).join(", ")}`, "state-bad"];
      return [job.message, "state-ok"];
    }
    if (job && job.status === "failed") return [job.message, "state-bad"];
    if (model.status === "partial") return ["Unfinished download", ""];
    return [model.refs && model.refs.length ? `Complete (${model.refs.join(", ")})` : "Complete", ""];
  }

  function button(label, name, action, id, extra) {
    const element = document.createElement("button");
    element.type = "button";
    element.textContent = label;
    element.setAttribute("aria-label", `${label} ${name}`);
    element.dataset.action = action;
    element.dataset.id = id;
    if (extra) element.className = extra;
    return element;
  }

  function render() {
    const body = $("local-models");
    body.replaceChildren();
    $("local-empty").hidden = state.models.length > 0;
    $("local-table").hidden = state.models.length === 0;
    for (const model of state.models) {
      const row = document.createElement("tr");
      row.dataset.id = model.id;
      const name = document.createElement("td");
      const title = document.createElement("div");
      title.textContent = model.name;
      const id = document.createElement("div");
      id.className = "model-id";
      id.textContent = model.id;
      name.append(title, id);
      const source = document.createElement("td");
      source.textContent = PROVIDERS[model.provider] || model.provider;
      const size = document.createElement("td");
      size.className = "size";
      size.textContent = formatBytes(model.size_on_disk);
      const status = document.createElement("td");
      const [text, tone] = statusText(model);
      status.textContent = text;
      if (tone) status.className = tone;
      const actions = document.createElement("td");
      const box = document.createElement("div");
      box.className = "local-actions";
      if (state.confirming === model.id) {
        const question = document.createElement("span");
        question.className = "confirm";
        question.textContent = `Delete ${model.name} (${formatBytes(model.size_on_disk)})?`;
        box.append(question, button("Delete", model.name, "confirm-delete", model.id, "danger"),
          button("Keep", model.name, "keep", model.id));
      } else {
        if (model.status === "complete") box.append(button("Verify", model.name, "verify", model.id));
        box.append(button("Delete", model.name, "delete", model.id, "danger"));
      }
      actions.append(box);
      row.append(name, source, size, status, actions);
      body.append(row);
    }
  }

  async function onAction(event) {
    const target = event.target.closest("button[data-action]");
    if (!target) return;
    const id = target.dataset.id;
    const action = target.dataset.action;
    $("local-error").textContent = "";
    if (action === "delete") { state.confirming = id; render(); focusAction(id, "confirm-delete"); return; }
    if (action === "keep") { state.confirming = null; render(); focusAction(id, "delete"); return; }
    try {
      if (action === "confirm-delete") {
        state.confirming = null;
        await call("DELETE", modelPath(id));
        await refresh();
      } else if (action === "verify") {
        const job = await call("POST", `${modelPath(id)}/verify`);
        // Its events may have come down the stream before this answer: keep the newest state.
        const known = state.verifications.get(id);
        if (!known || known.id !== job.id) state.verifications.set(id, job);
        render();
      }
    } catch (error) {
      $("local-error").textContent = error.message;
      render();
    }
  }

  function focusAction(id, action) {
    for (const element of $("local-models").querySelectorAll(`button[data-action="${action}"]`)) {
      if (element.dataset.id === id) { element.focus(); return; }
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("local-models").addEventListener("click", onAction);
  });
  document.addEventListener("modelpull:ready", () => {
    $("local").hidden = false;
    refresh();
  });
  document.addEventListener("modelpull:job", (event) => {
    if (event.detail && event.detail.status === "completed") refresh();
  });
  document.addEventListener("modelpull:local-model-removed", () => refresh());
  document.addEventListener("modelpull:verify", (event) => {
    const job = event.detail;
    if (!job || !job.model_id) return;
    const known = state.verifications.get(job.model_id);
    if (known && known.id !== job.id && known.status === "verifying" && job.status !== "verifying") return;
    state.verifications.set(job.model_id, job);
    if (state.confirming === null) render();
  });
})();
