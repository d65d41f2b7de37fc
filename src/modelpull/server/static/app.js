"use strict";
// modelpull's web page. One EventSource on /events feeds two maps (jobs, engines); every change
// re-renders the cards from those maps, so a reload or a reconnect only has to replay the server's
// snapshot. Server data is only ever written with textContent, never parsed as HTML.
(() => {
  const KEY_STORAGE = "modelpull.apiKey";
  const FINAL = new Set(["completed", "failed", "cancelled"]);
  const STATUS_LABELS = {
    queued: "Queued", downloading: "Downloading", paused: "Paused", verifying: "Verifying",
    completed: "Completed", failed: "Failed", cancelled: "Cancelled",
    loaded: "Ready", created: "Registered",
  };
  const PROVIDER_LABELS = { url: "URL", huggingface: "Hugging Face", mlx: "MLX", ollama: "Ollama" };
  const CONNECTION_LABELS = {
    connecting: "Connecting…", live: "Live", reconnecting: "Reconnecting…",
    offline: "Server unreachable, retrying…", locked: "Locked",
  };
  const RETRY_MIN_MS = 1000;
  const RETRY_MAX_MS = 15000;

  const state = {
    jobs: new Map(),       // job id -> job JSON
    engines: new Map(),    // engine id -> engine JSON
    cards: new Map(),      // "job:<id>" | "engine:<id>" -> card
    snapshot: null,        // ids seen since the stream (re)opened, until `ready`
    source: null,
    retryDelay: RETRY_MIN_MS,
    retryTimer: null,
    memoryKey: null,       // the API key when sessionStorage is unavailable
  };

  const $ = (id) => document.getElementById(id);

  // ------------------------------------------------------------------ formatting

  function formatBytes(count) {
    if (count == null) return "?";
    let value = Number(count);
    for (const unit of ["B", "kB", "MB", "GB", "TB"]) {
      if (Math.abs(value) < 1000 || unit === "TB") {
        return unit === "B" ? `${Math.round(value)} B` : `${value.toFixed(1)} ${unit}`;
      }
      value /= 1000;
    }
    return "?";
  }
  window.modelpullFormatBytes = formatBytes;  // the "On this machine" section (local.js) shows sizes alike

  function formatDuration(seconds) {
    const total = Math.max(0, Math.round(seconds));
    const hours = Math.floor(total / 3600);
    const minutes = Math.floor((total % 3600) / 60);
    const secs = total % 60;
    const pad = (n) => String(n).padStart(2, "0");
    if (hours) return `${hours}h${pad(minutes)}m`;
    if (minutes) return `${minutes}m${pad(secs)}s`;
    return `${secs}s`;
  }

  function formatPercent(percent) {
    if (percent >= 100) return "100%";
    // Floor, so that 99.96% never reads as 100% before the job completes.
    return `${(Math.floor(percent * 10) / 10).toFixed(1)}%`;
  }

  function formatCount(count) {
    for (const [size, suffix] of [[1e12, "T"], [1e9, "B"], [1e6, "M"], [1e3, "K"]]) {
      if (count >= size) return `${+(count / size).toFixed(count / size < 10 ? 1 : 0)}${suffix}`;
    }
    return String(count);
  }

  function lastPathPart(text) {
    const parts = String(text || "").split(/[\\/]/).filter(Boolean);
    return parts.length ? parts[parts.length - 1] : "";
  }

  function jobName(job) {
    if (job.provider === "url") {
      try {
        const name = decodeURIComponent(lastPathPart(new URL(job.model).pathname));
        if (name) return name;
      } catch (_) { /* not a URL after all: fall through */ }
    }
    return job.model || job.id;
  }

  // A URL as shown: without its query string, which may carry a signature.
  function shownModel(text) {
    if (!/^https?:\/\//i.test(text || "")) return text;
    try {
      const url = new URL(text);
      return url.origin + url.pathname;
    } catch (_) {
      return text;
    }
  }

  function ordinal(number) {
    const tens = number % 100;
    const suffix = tens >= 11 && tens <= 13 ? "th" : ({ 1: "st", 2: "nd", 3: "rd" }[number % 10] || "th");
    return `${number}${suffix}`;
  }

  function formatClock(ms) {
    if (!ms) return "";
    const when = new Date(ms);
    const sameDay = when.toDateString() === new Date().toDateString();
    const time = when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    return sameDay ? `at ${time}` : `on ${when.toLocaleDateString()} at ${time}`;
  }

  function isAbsolutePath(text) {
    return /^(\/|[A-Za-z]:[\\/]|\\\\)/.test(text || "");
  }

  function engineName(engine) {
    const info = engine.model_info || {};
    return info.name || lastPathPart(engine.local_path) || engine.engine_id;
  }

  // ------------------------------------------------------------------ API

  function storedKey() {
    try { return sessionStorage.getItem(KEY_STORAGE); } catch (_) { return null; }
  }

  function storeKey(key) {
    try {
      if (key) sessionStorage.setItem(KEY_STORAGE, key);
      else sessionStorage.removeItem(KEY_STORAGE);
    } catch (_) { /* storage disabled: the key lives until the next reload */ }
    state.memoryKey = key || null;
  }

  function apiKey() {
    return storedKey() || state.memoryKey || null;
  }

  class ApiError extends Error {
    constructor(message, status, param) {
      super(message);
      this.status = status;
      this.param = param || null;
    }
  }

  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    const key = apiKey();
    if (key) headers.Authorization = `Bearer ${key}`;
    const init = { method, headers, cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (_) {
      throw new ApiError("Could not reach the modelpull server. Check that it is running, then try again.", 0);
    }
    const text = await response.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
    if (response.status === 401) {
      storeKey(null);
      lock(key ? "That API key was not accepted. Enter it again." : "");
    }
    if (!response.ok) {
      const error = data && data.error;
      const detail = data && typeof data.detail === "string" ? data.detail : null;
      const message = (error && error.message) || detail ||
        `The server answered ${response.status} ${response.statusText}`.trim();
      throw new ApiError(message, response.status, error && error.param);
    }
    return { status: response.status, data };
  }

  // ------------------------------------------------------------------ connection

  function setConnection(name) {
    const element = $("connection");
    element.dataset.state = name;
    element.textContent = CONNECTION_LABELS[name] || name;
  }

  function closeEvents() {
    if (state.source) state.source.close();
    state.source = null;
    clearTimeout(state.retryTimer);
  }

  function scheduleRetry() {
    clearTimeout(state.retryTimer);
    state.retryTimer = setTimeout(start, state.retryDelay);
    state.retryDelay = Math.min(state.retryDelay * 2, RETRY_MAX_MS);
  }

  // Checks the key (a cheap authenticated request) before opening the stream: an EventSource
  // refused with 401 only says "error", so it could not tell a missing key from a down server.
  async function start() {
    clearTimeout(state.retryTimer);
    try {
      await api("GET", "/engines");
    } catch (error) {
      if (error.status === 401) return; // lock() has asked for the key
      if (error.status === 0) {
        setConnection("offline");
        scheduleRetry();
        return;
      }
      // Any other answer still means the server is up: the stream may work.
    }
    showApp();
    connectEvents();
  }

  function parseData(event) {
    try { return JSON.parse(event.data); } catch (_) { return null; }
  }

  function connectEvents() {
    closeEvents();
    const key = apiKey();
    // EventSource cannot send headers: the server accepts the key as ?api_key= on /events only.
    const source = new EventSource(key ? `/events?api_key=${encodeURIComponent(key)}` : "/events");
    state.source = source;
    setConnection(state.jobs.size || state.engines.size ? "reconnecting" : "connecting");

    source.addEventListener("open", () => {
      state.snapshot = { jobs: new Set(), engines: new Set() };
    });
    // The page fell behind: a fresh snapshot follows, ending with `ready`, as after "open".
    source.addEventListener("resync", () => {
      state.snapshot = { jobs: new Set(), engines: new Set() };
    });
    source.addEventListener("job", (event) => {
      const job = parseData(event);
      if (!job || !job.id) return;
      if (state.snapshot) state.snapshot.jobs.add(job.id);
      upsertJob(job, true);
    });
    source.addEventListener("engine", (event) => {
      const engine = parseData(event);
      if (!engine || !engine.engine_id) return;
      if (state.snapshot) state.snapshot.engines.add(engine.engine_id);
      state.engines.set(engine.engine_id, engine);
      render();
    });
    source.addEventListener("job-removed", (event) => {
      const data = parseData(event);
      if (data && state.jobs.delete(data.id)) render();
    });
    source.addEventListener("engine-removed", (event) => {
      const data = parseData(event);
      if (data && state.engines.delete(data.engine_id)) render();
    });
    // The "On this machine" section (local.js) follows the same stream.
    for (const kind of ["job", "verify", "local-model-removed", "ready"]) {
      source.addEventListener(kind, (event) => {
        document.dispatchEvent(new CustomEvent(`modelpull:${kind}`, { detail: parseData(event) }));
      });
    }
    source.addEventListener("ready", () => {
      // The snapshot is complete: whatever it did not mention is gone from the server.
      const seen = state.snapshot;
      if (seen) {
        for (const id of [...state.jobs.keys()]) if (!seen.jobs.has(id)) state.jobs.delete(id);
        for (const id of [...state.engines.keys()]) if (!seen.engines.has(id)) state.engines.delete(id);
      }
      state.snapshot = null;
      state.retryDelay = RETRY_MIN_MS;
      setConnection("live");
      render();
    });
    source.addEventListener("error", () => {
      if (source !== state.source) return;
      if (source.readyState === EventSource.CLOSED) {
        // Refused (not a network blip the browser retries itself): check the key, then retry.
        state.source = null;
        setConnection("offline");
        scheduleRetry();
      } else {
        setConnection("reconnecting");
      }
    });
  }

  // ------------------------------------------------------------------ state

  function upsertJob(job, fromStream) {
    const previous = state.jobs.get(job.id);
    // A POST answer may arrive after the stream already carried a newer state of the same job.
    if (!fromStream && previous && (previous.event_id || 0) > (job.event_id || 0)) return;
    state.jobs.set(job.id, job);
    if (previous && previous.status !== job.status && !state.snapshot) {
      const label = STATUS_LABELS[job.status] || job.status;
      const detail = job.status === "failed" ? `: ${job.error_message || job.message || ""}` : "";
      announce(`${jobName(job)}: ${label}${detail}`);
    }
    render();
  }

  function engineForJob(job) {
    if (job.engine_id && state.engines.has(job.engine_id)) return state.engines.get(job.engine_id);
    for (const engine of state.engines.values()) if (engine.download_id === job.id) return engine;
    return null;
  }

  function announce(text) {
    const region = $("announcer");
    region.textContent = "";
    setTimeout(() => { region.textContent = text; }, 50);
  }

  // ------------------------------------------------------------------ rendering

  function render() {
    const wanted = new Map();
    const linkedEngines = new Set();
    for (const job of state.jobs.values()) {
      const engine = engineForJob(job);
      if (engine) linkedEngines.add(engine.engine_id);
      wanted.set(`job:${job.id}`, { job, engine, created: job.created_at || 0 });
    }
    for (const engine of state.engines.values()) {
      if (!linkedEngines.has(engine.engine_id)) {
        wanted.set(`engine:${engine.engine_id}`, { job: null, engine, created: engine.created_at || 0 });
      }
    }
    for (const [key, card] of state.cards) {
      if (wanted.has(key)) continue;
      if (card.root.contains(document.activeElement)) $("jobs-title").focus();
      card.root.remove();
      state.cards.delete(key);
    }
    for (const [key, item] of wanted) {
      let card = state.cards.get(key);
      if (!card) {
        card = createCard(key, item.created);
        state.cards.set(key, card);
        $("jobs").appendChild(card.root);
      }
      card.order = orderOf(item);
      updateCard(card, item);
    }
    arrangeCards();
    $("empty").hidden = state.cards.size > 0;
  }

  // Active downloads first (running, then queued in line order, then paused), then finished
  // ones, newest first. Returns a sort key: [group, then a number, smaller first].
  function orderOf({ job, engine }) {
    const status = job ? job.status : null;
    if (status === "downloading" || status === "verifying") return [0, -(job.started_at || job.created_at || 0)];
    if (status === "queued") return [1, job.queue_position || Number.MAX_SAFE_INTEGER];
    if (status === "paused") return [2, -(job.created_at || 0)];
    const finished = job ? (job.finished_at || job.created_at || 0) : (engine.created_at || 0);
    return [3, -finished];
  }

  // Moves only the cards out of place; a moved node loses keyboard focus, which is given back.
  function arrangeCards() {
    const list = $("jobs");
    const wanted = [...state.cards.values()].sort((a, b) => a.order[0] - b.order[0] || a.order[1] - b.order[1]);
    const focused = document.activeElement;
    for (let index = 0; index < wanted.length; index += 1) {
      const root = wanted[index].root;
      if (list.children[index] !== root) list.insertBefore(root, list.children[index] || null);
    }
    if (focused && focused !== document.activeElement && focused.isConnected) focused.focus({ preventScroll: true });
  }

  function createCard(key, created) {
    const root = $("card-template").content.firstElementChild.cloneNode(true);
    root.dataset.key = key;
    const card = {
      key, created, root,
      title: root.querySelector(".card-title"),
      badge: root.querySelector(".badge"),
      source: root.querySelector(".source"),
      bar: root.querySelector(".bar"),
      fill: root.querySelector(".fill"),
      percent: root.querySelector('[data-field="percent"]'),
      bytes: root.querySelector('[data-field="bytes"]'),
      speed: root.querySelector('[data-field="speed"]'),
      eta: root.querySelector('[data-field="eta"]'),
      state: root.querySelector(".state"),
      files: root.querySelector(".files"),
      filesSummary: root.querySelector(".files-summary"),
      fileList: root.querySelector(".file-list"),
      fileRows: new Map(),
      message: root.querySelector(".message"),
      error: root.querySelector(".error-message"),
      details: root.querySelector(".details"),
      detailsSignature: null,
      actionError: root.querySelector(".action-error"),
      actions: root.querySelector(".actions"),
      buttons: {},
    };
    const titleId = `title-${key.replace(/[^A-Za-z0-9_-]/g, "_")}`;
    card.title.id = titleId;
    root.querySelector("article").setAttribute("aria-labelledby", titleId);
    card.title.tabIndex = -1;
    for (const button of root.querySelectorAll("button[data-action]")) {
      card.buttons[button.dataset.action] = button;
    }
    return card;
  }

  function setText(element, text) {
    const value = text == null ? "" : String(text);
    if (element.textContent !== value) element.textContent = value;
    // Live regions stay in the page (a hidden one is not announced when it fills).
    element.hidden = value === "" && !element.hasAttribute("role");
  }

  function updateCard(card, { job, engine }) {
    const status = job ? job.status : engine.status;
    const name = job ? jobName(job) : engineName(engine);
    card.root.dataset.status = status;
    setText(card.title, name);
    setText(card.badge, STATUS_LABELS[status] || status);
    card.badge.dataset.status = status;

    const sourceParts = [];
    if (job) {
      sourceParts.push(PROVIDER_LABELS[job.provider] || job.provider, shownModel(job.model));
      if (job.engine_id) sourceParts.push(`engine ${job.engine_id}`);
    } else {
      sourceParts.push(`Engine ${engine.engine_id}`, shownModel(engine.model_path));
    }
    setText(card.source, sourceParts.filter(Boolean).join(" · "));

    updateProgress(card, job, engine, name);
    updateState(card, job);
    updateMessages(card, job, engine);
    updateFiles(card, job);
    updateDetails(card, job, engine);
    updateActions(card, job, name);
  }

  function updateProgress(card, job, engine, name) {
    let percent;
    let downloaded;
    let total;
    if (job) {
      percent = job.status === "completed" ? 100 : job.percent;
      downloaded = job.downloaded_bytes;
      total = job.total_bytes;
    } else {
      // An engine without a job: its file is on disk already.
      percent = 100;
      total = engine.model_info && engine.model_info.file_size;
      downloaded = total;
    }
    const active = job && (job.status === "downloading" || job.status === "verifying");
    const known = percent != null;
    card.bar.classList.toggle("indeterminate", !known && active);
    card.bar.setAttribute("aria-label", `Progress of ${name}`);
    if (known) {
      const shown = Math.max(0, Math.min(100, percent));
      card.fill.style.width = `${shown}%`;
      card.bar.setAttribute("aria-valuenow", String(Math.floor(shown * 10) / 10));
      card.bar.setAttribute("aria-valuetext", formatPercent(shown));
    } else {
      card.fill.style.width = "0%";
      card.bar.removeAttribute("aria-valuenow");
      card.bar.setAttribute("aria-valuetext", "size not known yet");
    }
    setText(card.percent, known ? formatPercent(percent) : "—");
    let bytes = "—";
    if (total) bytes = `${formatBytes(downloaded || 0)} of ${formatBytes(total)}`;
    else if (downloaded) bytes = formatBytes(downloaded);
    setText(card.bytes, bytes);
    const downloading = job && job.status === "downloading";
    setText(card.speed, downloading && job.speed_bps != null ? `${formatBytes(job.speed_bps)}/s` : "—");
    setText(card.eta, downloading && job.eta_seconds != null ? formatDuration(job.eta_seconds) : "—");
  }

  function updateMessages(card, job, engine) {
    let message = "";
    let error = "";
    if (job) {
      if (job.status === "failed") {
        error = job.error_message || job.message || "The download failed.";
      } else {
        // A queued job's message is its place in line, a paused one's that it keeps its data:
        // the state line says both already.
        message = job.status === "queued" || job.status === "paused" ? "" : job.message || "";
        if (job.files_total > 1 && !FINAL.has(job.status) && !(job.files && job.files.length)) {
          const files = `${job.files_completed} of ${job.files_total} files`;
          message = message ? `${message} · ${files}` : files;
        }
        if (job.shared_with && job.shared_with.length && !FINAL.has(job.status)) {
          message += `${message ? " · " : ""}shares its transfer with ${job.shared_with.join(", ")}`;
        }
      }
    }
    if (engine && engine.status === "failed") {
      const engineError = `Engine not created: ${engine.error_message || "the file is not a model modelpull recognises."}`;
      error = error ? `${error} ${engineError}` : engineError;
    }
    setText(card.message, message);
    setText(card.error, error);
  }

  // What the job is doing, in words that never claim more than the server said: a queued job
  // has not started, a paused one keeps its data, a finished one says when.
  function updateState(card, job) {
    let text = "";
    if (job) {
      switch (job.status) {
        case "queued":
          text = job.queue_position ? `Queued, ${ordinal(job.queue_position)} in line` : "Queued";
          break;
        case "downloading":
          text = job.started_at ? `Downloading since ${formatClock(job.started_at).replace(/^at /, "")}` : "Downloading";
          break;
        case "verifying":
          text = "Verifying the downloaded data";
          break;
        case "paused":
          text = "Paused; the partial data is kept";
          break;
        default:
          text = `${STATUS_LABELS[job.status] || job.status} ${formatClock(job.finished_at)}`.trim();
      }
    }
    setText(card.state, text);
  }

  // One row per file with its own bar, for downloads of several files (Hugging Face repos).
  function updateFiles(card, job) {
    const files = job && Array.isArray(job.files) && job.files.length > 1 ? job.files : null;
    card.files.hidden = !files;
    if (!files) return;
    const done = files.filter((file) => file.status === "complete").length;
    setText(card.filesSummary, `Files: ${done} of ${files.length} complete`);
    if (card.fileRows.size === 0 && !FINAL.has(job.status)) card.files.open = files.length <= 12;
    const seen = new Set();
    for (const file of files) {
      seen.add(file.name);
      let row = card.fileRows.get(file.name);
      if (!row) {
        const root = $("file-template").content.firstElementChild.cloneNode(true);
        row = {
          root, name: root.querySelector(".file-name"), bytes: root.querySelector(".file-bytes"),
          bar: root.querySelector(".file-bar"), fill: root.querySelector(".fill"),
        };
        row.bar.setAttribute("aria-label", `Progress of ${file.name}`);
        card.fileRows.set(file.name, row);
        card.fileList.appendChild(root);
      }
      const percent = file.total_bytes ? Math.min(100, (100 * (file.downloaded_bytes || 0)) / file.total_bytes)
        : (file.status === "complete" ? 100 : 0);
      row.root.dataset.status = file.status;
      setText(row.name, file.name);
      const size = file.total_bytes != null
        ? `${formatBytes(file.downloaded_bytes || 0)} of ${formatBytes(file.total_bytes)}` : formatBytes(file.downloaded_bytes || 0);
      setText(row.bytes, file.status === "complete" ? `${formatBytes(file.total_bytes)}, done` : size);
      row.fill.style.width = `${percent}%`;
      row.bar.setAttribute("aria-valuenow", String(Math.floor(percent * 10) / 10));
    }
    for (const [name, row] of card.fileRows) {
      if (!seen.has(name)) {
        row.root.remove();
        card.fileRows.delete(name);
      }
    }
  }

  // Where the model is: always an absolute path from the server; for Ollama also its store.
  function savedRows(job, engine) {
    const completed = job ? job.status === "completed" : true;
    const localPath = (job && job.local_path) || (engine && engine.local_path);
    if (!completed || !localPath) return [];
    if (!job || job.provider !== "ollama") return [["Saved to", localPath, "path"]];
    const store = job.options && job.options.models_path;
    if (!isAbsolutePath(localPath)) return [["Saved to", `the Ollama server's store, as ${localPath}`, "path"]];
    if (store && localPath.startsWith(store)) return [["Saved to", localPath, "path"], ["Ollama store", store, "path"]];
    return [["Saved to", `${localPath} (in the Ollama server's store)`, "path"]];
  }

  function updateDetails(card, job, engine) {
    const rows = savedRows(job, engine);
    if (engine) {
      rows.push(["Engine", `${engine.engine_id} (${(STATUS_LABELS[engine.status] || engine.status).toLowerCase()})`]);
      const info = engine.model_info || {};
      if (info.name) rows.push(["Model", info.name]);
      if (info.format) rows.push(["Format", String(info.format).toUpperCase()]);
      if (info.architecture) rows.push(["Architecture", info.architecture]);
      if (info.parameter_count) rows.push(["Parameters", formatCount(info.parameter_count)]);
      if (info.quantization) rows.push(["Quantization", info.quantization]);
      if (info.dtype) rows.push(["Data type", info.dtype]);
      if (info.context_length) rows.push(["Context", `${Number(info.context_length).toLocaleString("en-US")} tokens`]);
      if (info.file_size) rows.push(["File size", formatBytes(info.file_size)]);
    }
    const signature = JSON.stringify(rows);
    if (signature === card.detailsSignature) return;
    card.detailsSignature = signature;
    const fragment = document.createDocumentFragment();
    for (const [term, value, kind] of rows) {
      const row = document.createElement("div");
      if (kind) row.className = kind;
      const dt = document.createElement("dt");
      dt.textContent = term;
      const dd = document.createElement("dd");
      dd.textContent = value;
      row.append(dt, dd);
      fragment.append(row);
    }
    card.details.replaceChildren(fragment);
    card.details.hidden = rows.length === 0;
  }

  function updateActions(card, job, name) {
    const status = job ? job.status : null;
    const visible = {
      pause: status === "queued" || status === "downloading",
      resume: status === "paused" || status === "failed",
      cancel: Boolean(job) && !FINAL.has(status),
      dismiss: Boolean(job) && FINAL.has(status),
    };
    // The same route resumes a paused job and retries a failed one; say which.
    const resumeLabel = status === "failed" ? "Retry" : "Resume";
    if (card.buttons.resume.textContent !== resumeLabel) card.buttons.resume.textContent = resumeLabel;
    const focused = document.activeElement;
    let lostFocus = false;
    for (const [action, button] of Object.entries(card.buttons)) {
      const label = `${button.textContent} ${name}`;
      if (button.getAttribute("aria-label") !== label) button.setAttribute("aria-label", label);
      if (button.hidden === !visible[action]) continue;
      if (!visible[action] && button === focused) lostFocus = true;
      button.hidden = !visible[action];
    }
    card.actions.hidden = !Object.values(visible).some(Boolean);
    if (lostFocus) {
      // Pause became Resume (or the job ended): keep the keyboard user in this card.
      const next = Object.values(card.buttons).find((button) => !button.hidden);
      (next || card.title).focus();
    }
    if (job && FINAL.has(job.status) && job.status !== "failed") setText(card.actionError, "");
  }

  async function onCardAction(event) {
    const button = event.target.closest("button[data-action]");
    if (!button || button.getAttribute("aria-disabled") === "true") return;
    const root = button.closest("li.card");
    const key = root && root.dataset.key;
    if (!key || !key.startsWith("job:")) return;
    const card = state.cards.get(key);
    const jobId = key.slice(4);
    const job = state.jobs.get(jobId);
    let path = `/downloads/${encodeURIComponent(jobId)}/${button.dataset.action}`;
    if (button.dataset.action === "cancel" && job && (job.downloaded_bytes || job.status !== "queued")) {
      const choice = await askCancel(job);
      if (!choice) return;
      if (choice === "keep") path += "?keep_partial=true";
    }
    button.setAttribute("aria-disabled", "true");
    try {
      await api("POST", path);
      if (button.dataset.action === "dismiss" && state.jobs.delete(jobId)) {
        $("jobs-title").focus();
        render();
      }
      if (card) setText(card.actionError, "");
    } catch (error) {
      if (card && error.status !== 401) setText(card.actionError, error.message);
    } finally {
      button.removeAttribute("aria-disabled");
    }
  }

  // Cancel asks what to do with the bytes already on disk: keep them (downloading the same model
  // again resumes from them, as after Ctrl-C in the CLI) or delete them. "" = do not cancel.
  function askCancel(job) {
    const dialog = $("cancel-dialog");
    const size = job.downloaded_bytes ? `${formatBytes(job.downloaded_bytes)} downloaded so far` : "Some data may be on disk already";
    setText($("cancel-title"), `Cancel ${jobName(job)}?`);
    setText($("cancel-text"), `${size}. Keep it, and downloading the same model again resumes from it; or delete it.`);
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => resolve(dialog.returnValue || ""), { once: true });
      dialog.returnValue = "";
      dialog.showModal();
    });
  }

  // ------------------------------------------------------------------ forms

  const FIELD_FOR_PARAM = {
    model: "model", model_path: "model", provider: "model", options: "model",
    token: "token", engine_id: "engine-id",
    "options.revision": "opt-revision", "options.sha256": "opt-sha256", sha256: "opt-sha256",
    "options.allow_patterns": "opt-include", "options.ignore_patterns": "opt-exclude",
  };
  const OPTION_FIELDS = ["opt-revision", "opt-sha256", "opt-include", "opt-exclude"];

  function clearFormError() {
    setText($("form-error"), "");
    for (const id of ["model", "token", "engine-id", ...OPTION_FIELDS]) $(id).removeAttribute("aria-invalid");
  }

  function patterns(text) {
    return text.split(",").map((part) => part.trim()).filter(Boolean);
  }

  // The options disclosure as the `options` object of POST /downloads (only what was filled in).
  function formOptions() {
    const options = {};
    const revision = $("opt-revision").value.trim();
    const sha256 = $("opt-sha256").value.trim().toLowerCase();
    const include = patterns($("opt-include").value);
    const exclude = patterns($("opt-exclude").value);
    if (revision) options.revision = revision;
    if (sha256) options.sha256 = sha256;
    if (include.length) options.allow_patterns = include;
    if (exclude.length) options.ignore_patterns = exclude;
    return options;
  }

  // What the POST answer says, and no more: a queued job has not started.
  function submittedStatus(job, fallback) {
    if (!job || !job.id) return `Added: ${fallback}`;
    const name = jobName(job);
    if (job.status === "queued") {
      return job.queue_position ? `Queued: ${name}, ${ordinal(job.queue_position)} in line` : `Queued: ${name}`;
    }
    if (job.status === "completed") return `Already downloaded: ${name}`;
    return `Downloading: ${name}`;
  }

  function showFormError(message, fieldId) {
    setText($("form-status"), "");
    setText($("form-error"), message);
    if (fieldId) {
      const field = $(fieldId);
      if (OPTION_FIELDS.includes(fieldId)) $("options").open = true;
      field.setAttribute("aria-invalid", "true");
      field.setAttribute("aria-errormessage", "form-error");
      field.focus();
    }
  }

  async function onDownloadSubmit(event) {
    event.preventDefault();
    const submit = event.target.querySelector('button[type="submit"]');
    if (submit.getAttribute("aria-disabled") === "true") return;
    clearFormError();
    const model = $("model").value.trim();
    const token = $("token").value.trim();
    const engineId = $("engine-id").value.trim();
    if (!model) {
      showFormError("Enter the model's URL or reference, for example hf:Qwen/Qwen2.5-0.5B-Instruct.", "model");
      return;
    }
    const options = formOptions();
    if (engineId && Object.keys(options).some((name) => name !== "sha256")) {
      showFormError("With an engine id, only the SHA-256 option applies: put a revision in the reference "
        + "(hf:org/name@revision:file), or leave the engine id empty.", "engine-id");
      return;
    }
    submit.setAttribute("aria-disabled", "true");
    setText($("form-status"), "Sending…");
    try {
      let status;
      if (engineId) {
        // The token travels in the body only, never in a URL.
        const body = { engine_id: engineId, model_path: model };
        if (token) body.token = token;
        if (options.sha256) body.sha256 = options.sha256;
        const { data } = await api("POST", "/engines", body);
        status = (data && data.message) || `Engine ${engineId} requested.`;
      } else {
        const body = { model };
        if (token) body.token = token;
        if (Object.keys(options).length) body.options = options;
        const { data } = await api("POST", "/downloads", body);
        if (data && data.id) upsertJob(data, false);
        status = submittedStatus(data, model);
      }
      $("download-form").reset();
      setText($("form-status"), status);
    } catch (error) {
      if (error.status !== 401) showFormError(error.message, FIELD_FOR_PARAM[error.param] || null);
    } finally {
      submit.removeAttribute("aria-disabled");
      if ($("form-status").textContent === "Sending…") setText($("form-status"), "");
    }
  }

  function lock(message) {
    closeEvents();
    state.jobs.clear();
    state.engines.clear();
    render();
    $("start").hidden = true;
    $("list").hidden = true;
    $("auth").hidden = false;
    setText($("auth-error"), message || "");
    setConnection("locked");
    $("api-key").focus();
  }

  function showApp() {
    const wasLocked = !$("auth").hidden;
    $("auth").hidden = true;
    $("start").hidden = false;
    $("list").hidden = false;
    if (wasLocked) $("model").focus();
  }

  function onAuthSubmit(event) {
    event.preventDefault();
    const input = $("api-key");
    const key = input.value.trim();
    if (!key) {
      setText($("auth-error"), "Enter the server's API key.");
      input.focus();
      return;
    }
    storeKey(key);
    input.value = "";
    setText($("auth-error"), "");
    start();
  }

  // ------------------------------------------------------------------ start

  document.addEventListener("DOMContentLoaded", () => {
    $("download-form").addEventListener("submit", onDownloadSubmit);
    $("auth-form").addEventListener("submit", onAuthSubmit);
    $("jobs").addEventListener("click", onCardAction);
    start();
  });
})();
