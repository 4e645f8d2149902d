// stylefold status page. No framework, no external asset. Every value from the server
// goes into the page as text (textContent), never as HTML: file names are the user's.
"use strict";

const POLL_MS = 2000;
const IMAGE_REFRESH_MS = 3000;
const state = { presets: [], curves: {}, retried: {} };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

function fileUrl(id, which, max) {
  const base = `/api/jobs/${encodeURIComponent(id)}/${which}`;
  return max ? `${base}?max=${max}` : base;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

function clock(t) { return new Date(t * 1000).toLocaleTimeString(); }

async function api(path, options) {
  const response = await fetch(path, Object.assign({ credentials: "same-origin" }, options || {}));
  if (response.status === 401) { window.location.href = "/login"; throw new Error("login needed"); }
  return response;
}

function post(path, body) {
  return api(path, { method: "POST", headers: { "X-Stylefold": "1" }, body: body });
}

function replace(container, nodes, emptyText) {
  container.replaceChildren(...(nodes.length ? nodes : [el("p", { class: "empty", text: emptyText })]));
}

// ------------------------------------------------------------------ running jobs

function drawCurve(canvas, rows) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height;
  ctx.clearRect(0, 0, w, h);
  const points = rows.filter((r) => r.total_loss > 0);
  if (points.length < 2) return;
  const logs = points.map((r) => Math.log10(r.total_loss));
  const lo = Math.min(...logs), hi = Math.max(...logs);
  const first = points[0].step, last = points[points.length - 1].step;
  ctx.strokeStyle = "#3d5afe"; ctx.lineWidth = 2; ctx.beginPath();
  points.forEach((r, i) => {
    const x = 4 + ((r.step - first) / Math.max(1, last - first)) * (w - 8);
    const y = h - 4 - ((logs[i] - lo) / Math.max(1e-9, hi - lo)) * (h - 8);
    if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
  });
  ctx.stroke();
  ctx.fillStyle = "#6b6b70"; ctx.font = "11px system-ui";
  ctx.fillText(`total loss ${points[points.length - 1].total_loss.toExponential(2)} (log scale)`, 6, 13);
}

async function refreshCurve(id, canvas) {
  try {
    const response = await api(fileUrl(id, "live"));
    if (response.ok) drawCurve(canvas, (await response.json()).losses);
  } catch (err) { /* the next poll tries again */ }
}

function runningCard(job) {
  const live = liveParts(job.id);
  const step = job.step === null ? "starting" : `${job.step} / ${job.steps}`;
  const card = el("div", { class: "card job", "data-id": job.id, "data-state": job.claim || "" },
    el("div", {}, el("img", { class: "thumb", alt: job.name, src: fileUrl(job.id, "original", 240) })),
    el("div", {},
      el("div", { class: "name", text: job.source }),
      el("div", { class: "muted", text: job.preset_source || "" }),
      el("div", { class: "step", text: step }),
      el("div", { class: "rate muted", text: job.rate ? `${job.rate.toFixed(2)} steps/s · ${duration(job.eta_s)} left` :
        (job.claim === "interrupted" ? "interrupted: resumes at the next start" : "") }),
      live.image),
    el("div", {}, live.canvas));
  const now = Date.now();
  if (now - live.at > IMAGE_REFRESH_MS) {
    // The same elements across renders: no flicker while the next picture loads.
    live.at = now;
    const src = job.has_current ? `${fileUrl(job.id, "current")}?t=${now}` : fileUrl(job.id, "original", 256);
    const next = new Image();
    next.onload = () => { live.image.src = src; };
    next.src = src;
    if (!live.image.src) live.image.src = src;
    refreshCurve(job.id, live.canvas);
  }
  return card;
}

function liveParts(id) {
  if (!state.curves[id]) {
    state.curves[id] = { at: 0, image: el("img", { class: "current", alt: "current image" }),
      canvas: el("canvas", { class: "curve", width: 300, height: 110 }) };
  }
  return state.curves[id];
}

// ------------------------------------------------------------------ results and failures

function resultCard(job) {
  const links = el("div", { class: "links" },
    el("a", { href: fileUrl(job.id, "result"), target: "_blank", rel: "noopener", text: "result full size" }),
    el("a", { href: fileUrl(job.id, "plot"), target: "_blank", rel: "noopener", text: "loss plot" }),
    el("a", { href: fileUrl(job.id, "report"), download: "", text: "report" }),
    el("a", { href: fileUrl(job.id, "losses.csv"), download: "", text: "loss log" }));
  return el("div", { class: "card result", "data-id": job.id },
    el("div", { class: "name", text: `${job.source} → ${job.result}` }),
    el("div", { class: "pair" },
      el("figure", {}, el("img", { class: "before", alt: "before", src: fileUrl(job.id, "original", 440) }),
        el("figcaption", { text: "before" })),
      el("figure", {}, el("img", { class: "after", alt: "after", src: fileUrl(job.id, "result", 440) }),
        el("figcaption", { text: `after · ${clock(job.updated)}` }))),
    links);
}

function failureRow(job) {
  const button = el("button", { class: "retry", type: "button", text: "Retry" });
  if (state.retried[job.id]) {
    button.disabled = true; button.textContent = state.retried[job.id];
  } else if (!job.retryable) {
    button.disabled = true; button.textContent = "no original"; button.title = "the original is no longer in failed/";
  }
  button.addEventListener("click", async () => {
    button.disabled = true;
    const response = await post(fileUrl(job.id, "retry"));
    const body = await response.json();
    button.textContent = response.ok ? `retried as ${body.id}` : `retry refused: ${body.detail}`;
    if (response.ok) state.retried[job.id] = button.textContent;
    refresh();
  });
  return el("div", { class: "failure", "data-id": job.id },
    el("span", { class: "name", text: job.source }),
    el("span", { class: "kind", text: job.error.kind }),
    el("span", { class: "error", text: job.error.error }),
    el("span", { class: "muted", text: clock(job.updated) }),
    button);
}

// ------------------------------------------------------------------ the rest

function renderPresets(presets) {
  const select = document.getElementById("preset-select");
  if (state.presets.length !== presets.length) {
    select.replaceChildren(...presets.filter((p) => !p.error).map((p) => el("option", { value: p.name, text: p.name })));
    replace(document.getElementById("presets"), presets.map((p) => el("div", { class: "card preset" },
      el("img", { alt: `style of ${p.name}`, src: `/api/presets/${encodeURIComponent(p.name)}/style?max=192` }),
      el("div", { class: "name", text: p.name }),
      el("div", { class: "muted", text: p.error || `${p.size} px · ${p.steps} steps · ${p.styles.join(", ")}` }),
      el("div", { text: p.description || "" }))), "No presets.");
  }
  state.presets = presets;
}

function renderDaemons(daemons, version) {
  replace(document.getElementById("daemons"), daemons.map((d) => {
    const memory = d.memory_bytes ? ` · ${(d.memory_bytes / 2 ** 30).toFixed(1)} GB` : "";
    const weights = d.weights ? `${d.weights.source} ${d.weights.name}` : "";
    return el("div", { class: "card daemon" },
      el("div", { class: "name", text: `${d.device} (${d.device_name || ""})${memory}` }),
      el("div", { class: "muted", text: `weights ${weights} · stylefold ${d.version} · torch ${d.torch || "?"}` }),
      el("div", { class: "muted", text: `${d.host} pid ${d.pid}, since ${clock(d.started)}` }));
  }), "No daemon is serving this root.");
  document.getElementById("version").textContent = `stylefold ${version}`;
}

function render(status) {
  document.getElementById("root").textContent = status.root;
  const counts = status.counts || {};
  document.getElementById("counts").textContent =
    `${status.queue.length} waiting · ${counts.done || 0} done · ${counts.failed || 0} failed`;
  replace(document.getElementById("running"), status.running.map(runningCard), "No job is running.");
  const body = document.querySelector("#queue tbody");
  body.replaceChildren(...status.queue.map((q) => el("tr", {},
    el("td", { text: q.source }), el("td", { text: q.preset || "–" }), el("td", { text: q.reason }))));
  document.getElementById("queue-empty").hidden = status.queue.length > 0;
  document.getElementById("queue").hidden = status.queue.length === 0;
  replace(document.getElementById("recent"), status.recent.map(resultCard), "No results yet.");
  replace(document.getElementById("failed"), status.failed.map(failureRow), "No failures.");
  renderPresets(status.presets);
  renderDaemons(status.daemons, status.version);
  renderWorkers(status.workers || []);
}

function renderWorkers(workers) {
  document.getElementById("workers-section").hidden = workers.length === 0;
  replace(document.getElementById("workers"), workers.map((w) => {
    if (w.problem) return el("div", { class: "card daemon", text: w.problem });
    const job = w.job ? `running ${w.source || w.job}` : "idle";
    const refused = w.refused ? " · refused: other weights than this daemon's" : "";
    return el("div", { class: "card daemon" },
      el("div", { class: "name", text: `${w.name} · ${w.device || "?"}${refused}` }),
      el("div", { class: "muted", text: `${job} · last heartbeat ${w.heartbeat_age_s}s ago · ${w.host || ""}` }));
  }), "No worker has reported to the broker.");
}

let refreshing = false;
async function refresh() {
  if (refreshing) return;
  refreshing = true;
  try {
    const response = await api("/api/status");
    if (response.ok) render(await response.json());
  } catch (err) { /* shown by the connection pill */ }
  finally { refreshing = false; }
}

// ------------------------------------------------------------------ upload

async function upload(files) {
  const list = document.getElementById("upload-status");
  const preset = document.getElementById("preset-select").value;
  for (const file of files) {
    const item = el("li", { text: `${file.name}: uploading…` });
    list.prepend(item);
    const form = new FormData();
    form.append("file", file);
    form.append("preset", preset);
    try {
      const response = await post("/api/jobs", form);
      const body = await response.json();
      if (response.ok) { item.textContent = `${file.name}: queued as ${body.source} (${body.id})`; item.dataset.id = body.id; }
      else { item.textContent = `${file.name}: ${body.detail}`; item.className = "bad"; }
    } catch (err) { item.textContent = `${file.name}: ${err}`; item.className = "bad"; }
  }
  refresh();
}

function setUpUpload() {
  const zone = document.getElementById("dropzone");
  const input = document.getElementById("file-input");
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => { e.preventDefault(); zone.classList.remove("over"); upload(e.dataTransfer.files); });
  input.addEventListener("change", () => { upload(input.files); input.value = ""; });
}

function listen() {
  const pill = document.getElementById("connection");
  const events = new EventSource("/api/events");
  events.onopen = () => { pill.textContent = "live"; pill.className = "pill live"; };
  events.onerror = () => { pill.textContent = "reconnecting…"; pill.className = "pill"; };
  for (const kind of ["start", "done", "failed", "waiting"]) events.addEventListener(kind, refresh);
  events.addEventListener("step", (e) => {
    const job = JSON.parse(e.data);
    const node = document.querySelector(`#running .job[data-id="${CSS.escape(job.id)}"] .step`);
    if (node && job.step !== null) node.textContent = `${job.step} / ${job.steps}`;
  });
}

document.addEventListener("DOMContentLoaded", () => {
  setUpUpload();
  listen();
  refresh();
  setInterval(refresh, POLL_MS);
});
