// loopwright view: one small script, no framework, no network beyond this origin.
// Every string from the trace store is untrusted (model output, prompts, feedback): it only
// ever reaches the page through text nodes (el() below), never innerHTML, and links are
// built from fixed paths plus encodeURIComponent, so a "javascript:" id stays a path.
"use strict";

const $main = () => document.getElementById("main");
const enc = encodeURIComponent;
let pollTimer = null;
const API_TIMEOUT_MS = 120000; // a first sweep report (bootstrap CIs) on a big store is slow

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "onclick" || k === "onchange" || k === "oninput") node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

async function api(route, params, timeoutMs = API_TIMEOUT_MS) {
  const qs = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) if (v !== "" && v != null) qs.set(k, v);
  // A request the viewer never answers becomes an error on the page, not a spinner forever.
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), timeoutMs);
  let res, text;
  try {
    res = await fetch(`/api/${route}?${qs}`, { headers: { Accept: "application/json" }, signal: ctl.signal });
    text = await res.text();
  } catch (e) {
    if (e.name === "AbortError") throw new Error(`the viewer did not answer /api/${route} in ${timeoutMs / 1000} s`);
    throw new Error(`cannot reach the viewer for /api/${route} (is \`loopwright view\` still running?)`);
  } finally {
    clearTimeout(timer);
  }
  let body = null;
  try {
    body = JSON.parse(text);
  } catch (e) {
    body = null;
  }
  // Every failure the viewer answers is JSON with one line in "error"; show that line.
  if (!res.ok) throw new Error((body && body.error) || `/api/${route}: HTTP ${res.status} ${res.statusText}`);
  if (body === null) throw new Error(`/api/${route}: the answer was not JSON`);
  return body;
}

// -- formatting ------------------------------------------------------------------------------
const pct = (x) => (x === null || x === undefined ? "–" : `${(100 * x).toFixed(1)} %`);
const num = (x) => (x === null || x === undefined ? "–" : Number(x).toLocaleString("en-US"));
const secs = (x) => (x === null || x === undefined ? "–" : `${Number(x).toFixed(1)} s`);
const usd = (x) => (x === null || x === undefined ? "–" : `$${Number(x).toFixed(4)}`);
const fix = (x, d = 3) => (x === null || x === undefined ? "–" : Number(x).toFixed(d));
function verdict(v) {
  if (v === null || v === undefined) return el("span", { class: "v none", title: "no verdict" }, "–");
  return v ? el("span", { class: "v pass" }, "pass") : el("span", { class: "v fail" }, "fail");
}
const runHref = (name) => `/run/${enc(name)}`;
const taskHref = (run, task) => `/run/${enc(run)}/task/${enc(task)}`;

function query() {
  return Object.fromEntries(new URLSearchParams(location.search));
}
function withQuery(changes) {
  const q = { ...query(), ...changes };
  for (const k of Object.keys(q)) if (q[k] === "" || q[k] == null) delete q[k];
  const s = new URLSearchParams(q).toString();
  return location.pathname + (s ? `?${s}` : "");
}
function poll(fn, ms) {
  clearInterval(pollTimer);
  pollTimer = setInterval(fn, ms);
  document.getElementById("live").textContent = `live: refreshing every ${ms / 1000} s`;
}
function stopPoll() {
  clearInterval(pollTimer);
  document.getElementById("live").textContent = "";
}

// A table with sortable headers (links that change ?sort=&dir=) and optional cell renderers.
function table(columns, rows, opts = {}) {
  const q = query();
  const head = el("tr", {}, columns.map((c) => {
    if (!c.sort || !opts.sortable) return el("th", {}, c.label);
    const active = q.sort === c.sort;
    const dir = active && q.dir !== "asc" ? "asc" : "desc";
    const arrow = active ? (q.dir === "asc" ? " ▲" : " ▼") : "";
    return el("th", {}, el("a", { href: withQuery({ sort: c.sort, dir, offset: "" }), class: "sort" }, c.label + arrow));
  }));
  const body = rows.map((r) => el("tr", { class: opts.rowClass ? opts.rowClass(r) : null },
    columns.map((c) => el("td", { class: c.cls || null }, c.cell ? c.cell(r) : r[c.key]))));
  return el("table", { class: "grid", id: opts.id || null }, el("thead", {}, head), el("tbody", {}, body));
}

function pager(page) {
  const { total, limit, offset } = page;
  if (total === undefined || total <= limit) return el("p", { class: "muted", id: "pager" }, `${num(total ?? page.rows.length)} rows`);
  const prev = offset > 0 ? el("a", { href: withQuery({ offset: Math.max(0, offset - limit) }) }, "← previous") : "";
  const next = offset + limit < total ? el("a", { href: withQuery({ offset: offset + limit }) }, "next →") : "";
  return el("p", { class: "pager", id: "pager" }, prev, ` rows ${num(offset + 1)}–${num(Math.min(total, offset + limit))} of ${num(total)} `, next);
}

// Where a filter form leads: this page with the form's values (empty ones dropped), the sort
// order and the compared runs kept, and paging reset.
function filterUrl(form, names) {
  const q = query();
  const next = new URLSearchParams();
  for (const keep of ["sort", "dir", "a", "b"]) if (q[keep] && !names.includes(keep)) next.set(keep, q[keep]);
  for (const [k, v] of new FormData(form)) if (typeof v === "string" && v !== "") next.set(k, v);
  const s = next.toString();
  return location.pathname + (s ? `?${s}` : "");
}

function filterForm(fields) {
  // Filtering is a plain URL change, so every filtered view is linkable. The script makes
  // that navigation itself: the CSP's form-action 'none' lets no form submit natively.
  const q = query();
  const names = fields.map((f) => f.name);
  const form = el("form", { class: "filters", method: "get", action: location.pathname });
  const go = () => location.assign(filterUrl(form, names));
  form.addEventListener("submit", (ev) => { ev.preventDefault(); go(); });
  for (const f of fields) {
    if (f.options) {
      form.append(el("label", {}, f.label, " ", el("select", { name: f.name, onchange: go },
        f.options.map(([v, t]) => el("option", { value: v, selected: (q[f.name] || "") === v }, t)))));
    } else {
      form.append(el("label", {}, f.label, " ", el("input", { name: f.name, value: q[f.name] || "", placeholder: f.placeholder || "" })));
    }
  }
  form.append(el("button", { type: "submit" }, "apply"));
  return form;
}

// A live refresh swaps only the parts that change (by id), so a half-typed filter survives.
function swapOrDraw(fresh, all) {
  const live = fresh.filter((n) => n.id && document.getElementById(n.id));
  if (live.length === fresh.length) live.forEach((n) => document.getElementById(n.id).replaceWith(n));
  else $main().replaceChildren(...all());
}

function progress(done, total) {
  const frac = total ? done / total : 0;
  return el("span", { class: "progress", title: `${done} of ${total} tasks finished` },
    el("progress", { max: total || 1, value: done }), ` ${num(done)}/${num(total)} (${Math.round(100 * frac)} %)`);
}

// -- pages ------------------------------------------------------------------------------------
const RUN_COLUMNS = [
  { label: "name", sort: "name", cell: (r) => el("a", { href: runHref(r.name), class: "run-link" }, r.name) },
  { label: "loop", sort: "loop", key: "loop" },
  { label: "model", sort: "model", key: "model" },
  { label: "verifier", sort: "verifier", cell: (r) => r.oracle ? el("span", { class: "oracle", title: "reads the grader's answer key: an upper bound, not a result" }, "oracle") : r.verifier },
  { label: "status", sort: "status", cell: (r) => el("span", { class: `status ${r.status}` }, r.status) },
  { label: "progress", sort: "progress", cell: (r) => progress(r.done, r.tasks) },
  { label: "graded pass", sort: "pass_rate", cls: "n", cell: (r) => pct(r.pass_rate) },
  { label: "tokens", sort: "tokens", cls: "n", cell: (r) => num(r.tokens) },
  { label: "cost", sort: "cost_usd", cls: "n", cell: (r) => usd(r.cost_usd) },
  { label: "wall", sort: "wall_s", cls: "n", cell: (r) => secs(r.wall_s) },
];

async function pageRuns() {
  document.title = "runs · loopwright";
  const q = query();
  const draw = async () => {
    const page = await api("runs", { q: q.q, status: q.status, sort: q.sort, dir: q.dir, offset: q.offset, limit: q.limit || 50 });
    const fresh = [table(RUN_COLUMNS, page.rows, { sortable: true, id: "runs", rowClass: (r) => (r.oracle ? "oracle-row" : null) }), pager(page)];
    swapOrDraw(fresh, () => [
      el("h1", {}, "Runs"),
      filterForm([{ name: "q", label: "filter", placeholder: "name, loop, model, verifier" },
        { name: "status", label: "status", options: [["", "any"], ["running", "running"], ["done", "done"], ["interrupted", "interrupted"]] }]),
      ...fresh]);
    if (page.rows.some((r) => r.status === "running")) poll(draw, 2000); else stopPoll();
  };
  await draw();
}

const TASK_COLUMNS = (run) => [
  { label: "#", sort: "idx", cls: "n", key: "idx" },
  { label: "task", sort: "task_id", cell: (r) => el("a", { href: taskHref(run, r.task_id), class: "task-link" }, r.task_id) },
  { label: "prompt", cell: (r) => el("span", { class: "snippet" }, r.prompt || "") },
  { label: "answer", cell: (r) => el("code", {}, r.final_answer ?? "–") },
  { label: "in-loop", sort: "verdict", cell: (r) => verdict(r.verdict) },
  { label: "graded", sort: "graded", cell: (r) => verdict(r.graded) },
  { label: "stop reason", sort: "stop_reason", cell: (r) => r.stop_reason ?? (r.error ? el("span", { class: "err", title: r.error }, "error") : "–") },
  { label: "rounds", sort: "rounds", cls: "n", key: "rounds" },
  { label: "tokens", sort: "tokens", cls: "n", cell: (r) => num(r.tokens) },
  { label: "status", sort: "status", cell: (r) => el("span", { class: `status ${r.status}` }, r.status) },
];

function runHeader(run) {
  return el("section", { class: "summary", id: "run-summary" },
    el("div", {}, el("b", {}, "loop "), run.loop),
    el("div", {}, el("b", {}, "model "), run.model),
    el("div", {}, el("b", {}, "verifier "), run.oracle ? el("span", { class: "oracle" }, "oracle (upper bound)") : run.verifier),
    el("div", {}, el("b", {}, "status "), el("span", { class: `status ${run.status}`, id: "run-status" }, run.status)),
    el("div", { id: "run-progress" }, el("b", {}, "progress "), progress(run.done, run.tasks)),
    el("div", {}, el("b", {}, "graded pass "), pct(run.pass_rate)),
    el("div", {}, el("b", {}, "tokens "), num(run.tokens)),
    el("div", {}, el("b", {}, "cost "), usd(run.cost_usd)),
    el("div", {}, el("b", {}, "wall "), secs(run.wall_s)),
    el("div", {}, el("b", {}, "tasks "), run.tasks_spec ?? "–"),
    el("div", {}, el("b", {}, "source "), sourceHash(run.provenance)));
}

function sourceHash(prov) {
  const src = prov && prov.source;
  if (!src || !src.rows_sha256) return "–";
  const code = prov.loopwright && prov.loopwright.commit ? ` · loopwright ${prov.loopwright.commit.slice(0, 10)}` : "";
  return el("code", { title: `${src.kind} ${src.location}${code}` }, src.rows_sha256.slice(0, 12));
}

async function pageRun(name) {
  document.title = `${name} · loopwright`;
  const q = query();
  const others = (await api("runs", { limit: 500 })).rows.filter((r) => r.name !== name);
  const draw = async () => {
    const [run, page] = await Promise.all([api("run", { name }),
      api("tasks", { run: name, filter: q.filter, stop: q.stop, q: q.q, sort: q.sort, dir: q.dir, offset: q.offset, limit: q.limit || 100 })]);
    const stops = [["", "any"], ...run.stop_reasons.filter((s) => s.stop_reason).map((s) => [s.stop_reason, `${s.stop_reason} (${s.n})`])];
    const cmp = el("select", { id: "compare-with" }, el("option", { value: "" }, "compare with…"), others.map((r) => el("option", { value: r.name }, r.name)));
    cmp.addEventListener("change", () => { if (cmp.value) location.href = `/compare?a=${enc(name)}&b=${enc(cmp.value)}`; });
    const summary = runHeader(run);
    const tasks = table(TASK_COLUMNS(name), page.rows, { sortable: true, id: "tasks", rowClass: (r) => (r.verdict != null && r.graded != null && r.verdict !== r.graded ? "disagree" : null) });
    const pg = pager(page);
    swapOrDraw([summary, tasks, pg], () => [
      el("p", { class: "crumbs" }, el("a", { href: "/" }, "runs"), " / ", name),
      el("h1", {}, name, " ", run.oracle ? el("span", { class: "oracle" }, "oracle") : ""),
      summary, el("p", {}, cmp),
      filterForm([{ name: "filter", label: "show", options: [["", "all tasks"], ["failed", "failed (graded or error)"], ["errors", "errors"], ["disagree", "in-loop ≠ graded"], ["passed", "passed"], ["running", "running"]] },
        { name: "stop", label: "stop reason", options: stops }, { name: "q", label: "search", placeholder: "task id or prompt" }]),
      tasks, pg]);
    if (run.status === "running") poll(draw, 1500); else stopPoll();
  };
  await draw();
}

window.loopwright = { el, api, pct, num, secs, usd, fix, verdict, table, pager, filterForm, query, withQuery, runHref, taskHref, $main, stopPoll };

function route() {
  const parts = location.pathname.split("/").filter(Boolean).map(decodeURIComponent);
  if (parts.length === 0) return pageRuns();
  if (parts[0] === "run" && parts.length === 2) return pageRun(parts[1]);
  if (parts[0] === "run" && parts.length === 4 && parts[2] === "task") return window.loopwrightPages.task(parts[1], parts[3]);
  if (parts[0] === "sweeps") return window.loopwrightPages.sweeps();
  if (parts[0] === "sweep" && parts.length === 2) return window.loopwrightPages.sweep(parts[1]);
  if (parts[0] === "compare") return window.loopwrightPages.compare();
  if (parts[0] === "improve") return window.loopwrightPages.improve();
  $main().replaceChildren(el("p", { class: "error" }, "no such page"));
}

window.addEventListener("DOMContentLoaded", () => {
  route().catch((e) => $main().replaceChildren(el("p", { class: "error", id: "error" }, `error: ${e.message}`)));
});
