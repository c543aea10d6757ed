// The aioqueue dashboard: polls the JSON API every second; every action goes through it.
"use strict";
const $ = (id) => document.getElementById(id);
const S = { queue: null, readOnly: false, history: [], jobId: null, busy: false };

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v); else if (v !== false && v != null) e.setAttribute(k, v);
  }
  for (const k of kids) e.append(k instanceof Node ? k : String(k ?? ""));
  return e;
}
const td = (v, cls) => el("td", cls ? { class: cls } : null, v);
const age = (s) => s == null ? "-" : s < 1 ? `${Math.round(s * 1000)} ms` : s < 120 ? `${s.toFixed(1)} s` : s < 7200 ? `${(s / 60).toFixed(1)} min` : `${(s / 3600).toFixed(1)} h`;
const when = (t) => t == null ? "-" : new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19);
const say = (text) => { $("status").textContent = text; };

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  const token = sessionStorage.getItem("aioqueue-token");
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const data = await r.json().catch(() => ({ error: r.statusText }));
  if (r.status === 401) { $("login").hidden = false; $("token").focus(); }
  if (!r.ok) throw new Error(data.error || `${r.status}`);
  return data;
}
const q = (name) => `/api/queues/${encodeURIComponent(name)}`;

async function act(label, fn) {
  try { say(`${label}…`); const r = await fn(); say(`${label}: done`); await tick(); return r; }
  catch (e) { say(`${label}: ${e.message}`); }
}

function renderQueues(list) {
  if (!list.some((d) => d.queue === S.queue)) S.queue = list.length ? list[0].queue : null;
  $("queues").replaceChildren(...list.map((d) => el("tr", null,
    el("th", { scope: "row" }, el("button", { type: "button", "aria-pressed": String(d.queue === S.queue), onclick: () => { S.queue = d.queue; tick(); } }, d.queue)),
    td(d.pending, "n"), td(d.scheduled, "n"), td(d.running, "n"), td(d.dead, "n"),
    td(d.oldest_pending ? age(d.oldest_pending.age_s) : "-"), td(d.counters.completed || 0, "n"),
    td(d.paused ? "paused" : "running", d.paused ? "paused" : "live"),
    td(el("button", { type: "button", class: "write", onclick: () => act(`${d.paused ? "resume" : "pause"} ${d.queue}`, () => api("POST", `${q(d.queue)}/${d.paused ? "resume" : "pause"}`)) }, d.paused ? "Resume" : "Pause")))));
}

function renderWorkers(d) {
  $("workers-of").textContent = d ? `(${d.queue})` : "";
  const ws = d ? [...d.workers, ...d.gone_workers] : [];
  $("workers").replaceChildren(...ws.map((w) => el("tr", null,
    td(w.id), td(w.host), td(w.pid ?? "?"), td(w.processes ?? "?"), td(w.live ? "live" : "gone", w.live ? "live" : "gone"),
    td(w.jobs.length ? w.jobs.join(" ") : "idle"), td(`${when(w.heartbeat_deadline)} (${w.heartbeat_deadline_in_s >= 0 ? "in " + age(w.heartbeat_deadline_in_s) : age(-w.heartbeat_deadline_in_s) + " ago"})`))));
}

function chart(list) {
  const now = performance.now() / 1000;
  const done = list.reduce((n, d) => n + (d.counters.completed || 0), 0);
  const h = S.history, last = h[h.length - 1];
  if (last) h.push({ t: now, rate: Math.max(0, (done - last.done) / (now - last.t)), done });
  else h.push({ t: now, rate: 0, done });
  while (h.length > 120) h.shift();
  const c = $("chart"), g = c.getContext("2d"), W = c.width, H = c.height;
  const max = Math.max(1, ...h.map((p) => p.rate));
  g.clearRect(0, 0, W, H);
  g.fillStyle = "#6e7781"; g.font = "11px sans-serif";
  g.fillText(`${max.toFixed(1)}/s`, 4, 12); g.fillText("0", 4, H - 4);
  g.strokeStyle = "#1f6feb"; g.lineWidth = 2; g.beginPath();
  h.forEach((p, i) => { const x = W - (h.length - 1 - i) * (W / 119), y = H - 2 - (p.rate / max) * (H - 18); i ? g.lineTo(x, y) : g.moveTo(x, y); });
  g.stroke();
  $("rate").textContent = `(${h[h.length - 1].rate.toFixed(1)} completed/s, all queues)`;
}

async function renderDead() {
  if (!S.queue) { $("dead").replaceChildren(); return; }
  const p = new URLSearchParams({ task: $("f-task").value, error: $("f-error").value, limit: "100" });
  const d = await api("GET", `${q(S.queue)}/dead?${p}`);
  $("dead-count").textContent = `(${S.queue}: ${d.matching})`;
  $("dead").replaceChildren(...d.dead_letters.map((r) => el("tr", null,
    td(el("a", { href: `#job/${r.id}` }, r.id)), td(r.task), td(r.attempts, "n"),
    td(r.last_error ? `${r.last_error.type}: ${r.last_error.message}`.slice(0, 80) : "-"), td(when(r.dead_at)),
    td(el("button", { type: "button", class: "write", "aria-label": `Retry ${r.id}`, onclick: () => act(`retry ${r.id}`, async () => { await api("POST", `${q(S.queue)}/dead/retry`, { ids: [r.id] }); location.hash = `#job/${r.id}`; }) }, "Retry"), " ",
       el("button", { type: "button", class: "write danger", "aria-label": `Purge ${r.id}`, onclick: () => confirm(`Purge ${r.id} for good?`) && act(`purge ${r.id}`, () => api("POST", `${q(S.queue)}/dead/purge`, { ids: [r.id] })) }, "Purge")))));
}

function bulk(action) {
  const task = $("f-task").value, error = $("f-error").value;
  const sel = task || error ? Object.assign(task ? { task } : {}, error ? { error } : {}) : { all: true };
  const what = task || error ? `matching ${JSON.stringify(sel)}` : "(all of them)";
  if (S.queue && confirm(`${action} the dead letters of ${S.queue} ${what}?`))
    act(`${action} ${what}`, () => api("POST", `${q(S.queue)}/dead/${action}`, sel));
}

async function renderJob() {
  if (!S.jobId) { $("job").hidden = true; return; }
  const d = await api("GET", `/api/jobs/${encodeURIComponent(S.jobId)}`);
  const fields = [["id", d.id], ["queue", d.queue], ["state", d.state], ["task", d.task],
    ["args", d.args == null ? "not kept once finished" : JSON.stringify(d.args)], ["kwargs", d.kwargs == null ? "-" : JSON.stringify(d.kwargs)],
    ["attempts", d.attempts], ["submitted", when(d.submitted)], ["finished", when(d.finished)], ["held by", d.holder || "-"],
    ["progress", d.progress ? `${d.progress.fraction == null ? "?" : Math.round(d.progress.fraction * 100) + "%"} ${d.progress.message} (attempt ${d.progress.attempt})` : "-"],
    ["result", d.state === "complete" ? JSON.stringify(d.result) : "-"], ["error", d.error ? `${d.error.type}: ${d.error.message}` : "-"]];
  $("job-fields").replaceChildren(...fields.flatMap(([k, v]) => [el("dt", null, k), el("dd", { id: `job-${k.replace(" ", "-")}` }, v)]));
  $("job-errors").replaceChildren(...d.errors.map((e) => el("li", null, `attempt ${e.attempt} (${e.kind}) ${e.type}: ${e.message}`, e.traceback ? el("pre", null, e.traceback) : "")));
  $("job-cancel").disabled = S.readOnly || !["pending", "scheduled", "running"].includes(d.state);
  $("job").hidden = false;
}

async function tick() {
  if (S.busy) return;
  S.busy = true;
  try {
    const data = await api("GET", "/api/queues");
    S.readOnly = data.read_only;
    renderQueues(data.queues);
    renderWorkers(data.queues.find((d) => d.queue === S.queue));
    chart(data.queues);
    await renderDead();
    await renderJob().catch((e) => { $("job-fields").replaceChildren(el("dt", null, "error"), el("dd", null, e.message)); $("job").hidden = false; });
    for (const b of document.querySelectorAll(".write")) b.disabled = S.readOnly;
    $("login").hidden = true;
    say(`updated ${new Date().toLocaleTimeString()}${S.readOnly ? " · read-only" : ""}`);
  } catch (e) { say(e.message); }
  finally { S.busy = false; }
}

function route() {
  const m = location.hash.match(/^#job\/(.+)$/);
  S.jobId = m ? decodeURIComponent(m[1]) : null;
  if (S.jobId) $("job-id").value = S.jobId;
  tick();
}

$("login").addEventListener("submit", (e) => { e.preventDefault(); sessionStorage.setItem("aioqueue-token", $("token").value); $("token").value = ""; tick(); });
$("find").addEventListener("submit", (e) => { e.preventDefault(); location.hash = `#job/${encodeURIComponent($("job-id").value.trim())}`; });
$("dead-filter").addEventListener("submit", (e) => { e.preventDefault(); tick(); });
$("retry-all").addEventListener("click", () => bulk("retry"));
$("purge-all").addEventListener("click", () => bulk("purge"));
$("job-cancel").addEventListener("click", () => act(`cancel ${S.jobId}`, () => api("DELETE", `/api/jobs/${encodeURIComponent(S.jobId)}`)));
window.addEventListener("hashchange", route);
route();
setInterval(tick, 1000);
