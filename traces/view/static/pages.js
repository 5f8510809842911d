// loopwright view: the task tree, sweeps, compare and improve pages (helpers from app.js).
// As in app.js, untrusted text only ever becomes text nodes.
"use strict";

(() => {
  const { el, api, pct, num, secs, fix, verdict, table, pager, filterForm, query, runHref, taskHref, $main, stopPoll } = window.loopwright;
  const enc = encodeURIComponent;

  // -- task: the loop's tree ------------------------------------------------------------------
  function nodeLabel(n) {
    const bits = [el("span", { class: `role role-${n.role}` }, n.role), el("span", { class: "muted" }, ` r${n.round} d${n.depth}`)];
    if (n.answer != null) bits.push(" ", el("code", { class: "answer" }, n.answer));
    if (n.in_loop != null) bits.push(" ", verdict(n.in_loop));
    if (n.graded != null) bits.push(" ", el("span", { class: "muted" }, "graded "), verdict(n.graded));
    if (n.score != null) bits.push(el("span", { class: "stat" }, ` score ${fix(n.score, 2)}`));
    if (n.visits != null) bits.push(el("span", { class: "stat" }, ` visits ${n.visits}`));
    if (n.value != null) bits.push(el("span", { class: "stat" }, ` value ${fix(n.value, 3)}`));
    if (n.is_final) bits.push(el("span", { class: "final", title: "the node the loop returned" }, " ★ final"));
    bits.push(el("span", { class: "stat" }, ` · ${n.calls} call${n.calls === 1 ? "" : "s"}`));
    return bits;
  }

  function buildTree(nodes, onSelect) {
    const ids = new Set(nodes.map((n) => n.node_id));
    const kids = new Map();
    const roots = [];
    for (const n of nodes) {
      if (n.parent_id && ids.has(n.parent_id)) {
        if (!kids.has(n.parent_id)) kids.set(n.parent_id, []);
        kids.get(n.parent_id).push(n);
      } else roots.push(n);
    }
    // Iterative, so a 1,000-deep chain cannot overflow the stack.
    const top = el("ul", { class: "tree", id: "tree" });
    const stack = roots.slice().reverse().map((n) => [n, top]);
    while (stack.length) {
      const [n, parentUl] = stack.pop();
      const children = kids.get(n.node_id) || [];
      const li = el("li", { class: "node", "data-node": n.node_id });
      const fold = el("button", { class: "fold", type: "button", title: "fold / unfold", "aria-expanded": "true" }, children.length ? "▾" : "·");
      if (!children.length) fold.disabled = true;
      const head = el("a", { class: "node-head", href: `?node=${enc(n.node_id)}` }, nodeLabel(n));
      head.addEventListener("click", (ev) => { ev.preventDefault(); onSelect(n.node_id); });
      const snippet = el("div", { class: "snippet" }, n.snippet || "");
      li.append(fold, head, snippet);
      if (children.length) {
        const ul = el("ul", {});
        li.append(el("span", { class: "folded-note muted" }, ` (${children.length} hidden)`), ul);
        fold.addEventListener("click", () => {
          const open = li.classList.toggle("closed");
          fold.textContent = open ? "▸" : "▾";
          fold.setAttribute("aria-expanded", String(!open));
        });
        for (let i = children.length - 1; i >= 0; i--) stack.push([children[i], ul]);
      }
      parentUl.append(li);
    }
    return top;
  }

  function voteBox(nodes) {
    const counts = new Map();
    for (const n of nodes) if (n.answer != null) counts.set(n.answer, (counts.get(n.answer) || 0) + 1);
    if (!counts.size) return "";
    const final = nodes.find((n) => n.is_final);
    const rows = [...counts.entries()].sort((a, b) => b[1] - a[1]).map(([answer, n]) => ({ answer, n, chosen: final && final.answer === answer }));
    return el("section", { class: "vote", id: "vote" }, el("h3", {}, "vote over samples"),
      table([{ label: "answer", cell: (r) => el("code", {}, r.answer) }, { label: "samples", cls: "n", key: "n" },
        { label: "", cell: (r) => (r.chosen ? el("span", { class: "final" }, "★ chosen") : "") }], rows));
  }

  function diffSide(runs) {
    return el("pre", { class: "text diff-side" }, runs.map(([kind, text]) => el("span", { class: `d-${kind}` }, text)));
  }

  async function showCall(box, callId) {
    box.replaceChildren(el("p", { class: "muted", id: "call-loading" }, "loading call…"));
    try {
      box.replaceChildren(callDetail(await api("call", { id: callId }, 30000)));  // one row
    } catch (e) {
      box.replaceChildren(el("p", { class: "error", id: "call-error" }, `error: ${e.message}`));
    }
  }

  function callDetail(c) {
    const params = { model: c.model, temperature: c.temperature, max_tokens: c.max_tokens, n: c.n, seed: c.seed, sample_index: c.sample_index };
    return el("div", { class: "call-detail", id: "call-detail" },
      el("h4", {}, `call ${c.call_id}`),
      el("p", {}, Object.entries(params).map(([k, v]) => el("span", { class: "kv" }, `${k}=${v ?? "–"}`))),
      el("p", {}, el("span", { class: "kv" }, `prompt ${num(c.prompt_tokens)} tok`), el("span", { class: "kv" }, `completion ${num(c.completion_tokens)} tok`),
        el("span", { class: "kv" }, `latency ${fix(c.latency_s, 3)} s`), el("span", { class: "kv" }, `attempts ${c.attempts}`),
        el("span", { class: "kv" }, c.cache_hit ? "cache hit" : "not cached"), el("span", { class: "kv" }, `finish ${c.finish_reason ?? "–"}`),
        c.error ? el("span", { class: "kv err" }, `error: ${c.error}`) : ""),
      el("h5", {}, "messages"),
      c.messages.map((m) => el("div", { class: "msg" }, el("div", { class: "msg-role" }, String(m.role)),
        el("pre", { class: "text" }, typeof m.content === "string" ? m.content : JSON.stringify(m.content, null, 2)))),
      el("h5", {}, "output"), el("pre", { class: "text output" }, c.output ?? ""));
  }

  // The latest selection wins: an answer for a node clicked earlier never replaces the panel.
  let selection = 0;
  async function showNode(panel, nodeId, preloaded) {
    const mine = ++selection;
    if (!preloaded) history.replaceState(null, "", `?node=${enc(nodeId)}`);
    const n = preloaded || (await api("node", { id: nodeId }));
    if (mine !== selection) return;
    document.querySelectorAll(".node.selected").forEach((x) => x.classList.remove("selected"));
    const li = document.querySelector(`li[data-node="${CSS.escape(nodeId)}"]`);
    if (li) li.classList.add("selected");
    const callBox = el("div", { id: "call-box" });
    const parts = [el("h2", {}, `${n.role} node`), el("p", { class: "muted" }, `id ${n.node_id} · round ${n.round} · depth ${n.depth}`),
      el("p", {}, el("b", {}, "answer "), el("code", { id: "node-answer" }, n.answer ?? "–"))];
    if (n.diff) {
      parts.push(el("h3", {}, "revision against its draft"));
      if (n.diff.note) parts.push(el("p", { class: "muted", id: "diff-note" }, n.diff.note));
      parts.push(el("div", { class: "diff", id: "diff" },
        el("div", {}, el("div", { class: "muted" }, `draft (${n.parent.role})`), diffSide(n.diff.old)),
        el("div", {}, el("div", { class: "muted" }, `revision (${n.role})`), diffSide(n.diff.new))));
    } else {
      parts.push(el("h3", {}, "text"), el("pre", { class: "text", id: "node-text" }, n.content ?? ""));
    }
    parts.push(el("h3", {}, "verdicts"), n.verdicts.length ? n.verdicts.map((v) => el("div", { class: "verdict" },
      el("span", { class: "kv" }, v.stage), el("span", { class: "kv" }, `${v.verifier}${v.verifier_version ? " " + v.verifier_version : ""}`), verdict(v.passed),
      v.score != null ? el("span", { class: "kv" }, `score ${fix(v.score, 3)}`) : "",
      v.feedback ? el("pre", { class: "text feedback" }, v.feedback) : "")) : el("p", { class: "muted" }, "none"));
    parts.push(el("h3", {}, "calls"), n.calls.length ? table([
      { label: "", cell: (c) => el("button", { type: "button", class: "open-call", onclick: () => showCall(callBox, c.call_id) }, "open") },
      { label: "role", key: "role" }, { label: "sample", cls: "n", key: "sample_index" },
      { label: "temp", cls: "n", cell: (c) => fix(c.temperature, 2) }, { label: "tokens", cls: "n", cell: (c) => `${num(c.prompt_tokens)} + ${num(c.completion_tokens)}` },
      { label: "latency", cls: "n", cell: (c) => `${fix(c.latency_s, 3)} s` }, { label: "cache", cell: (c) => (c.cache_hit ? "hit" : "–") },
      { label: "attempts", cls: "n", key: "attempts" }], n.calls, { id: "calls" }) : el("p", { class: "muted" }, "no model call (e.g. a tool node)"), callBox);
    panel.replaceChildren(...parts.flat());
  }

  async function pageTask(run, taskId) {
    document.title = `${taskId} · ${run} · loopwright`;
    stopPoll();
    const d = await api("task", { run, task: taskId, node: query().node });
    const t = d.task;
    const panel = el("aside", { class: "panel", id: "node-panel" }, el("p", { class: "muted" }, "select a node"));
    const tree = buildTree(d.nodes, (id) => showNode(panel, id));
    $main().replaceChildren(
      el("p", { class: "crumbs" }, el("a", { href: "/" }, "runs"), " / ", el("a", { href: runHref(run) }, run), " / ", taskId),
      el("h1", {}, taskId),
      el("section", { class: "summary" },
        el("div", {}, el("b", {}, "loop "), d.loop), el("div", {}, el("b", {}, "in-loop "), verdict(t.verdict)),
        el("div", {}, el("b", {}, "graded "), verdict(t.graded)), el("div", {}, el("b", {}, "stop "), t.stop_reason ?? "–"),
        el("div", {}, el("b", {}, "rounds "), t.rounds ?? "–"), el("div", {}, el("b", {}, "tokens "), num(t.total_tokens)),
        el("div", {}, el("b", {}, "wall "), secs(t.wall_s)), el("div", {}, el("b", {}, "final answer "), el("code", {}, t.final_answer ?? "–")),
        el("div", {}, el("b", {}, "reference "), el("code", {}, t.reference ?? "–")),
        t.worker ? el("div", {}, el("b", {}, "worker "), t.worker) : null),
      t.error ? el("pre", { class: "text err" }, t.error) : "",
      el("details", { class: "prompt" }, el("summary", {}, "prompt"), el("pre", { class: "text", id: "prompt" }, t.prompt ?? "")),
      d.loop && d.loop.startsWith("best-of-n") ? voteBox(d.nodes) : "",
      el("div", { class: "split" },
        el("section", {}, el("h2", {}, `tree (${num(d.nodes.length)} nodes${d.truncated ? ", cut" : ""})`),
          el("p", {}, el("button", { type: "button", id: "fold-all", onclick: () => document.querySelectorAll("#tree li.node").forEach((li) => { if (li.querySelector("ul")) { li.classList.add("closed"); li.querySelector(".fold").textContent = "▸"; } }) }, "fold all"), " ",
            el("button", { type: "button", id: "unfold-all", onclick: () => document.querySelectorAll("#tree li.node.closed").forEach((li) => { li.classList.remove("closed"); li.querySelector(".fold").textContent = "▾"; }) }, "unfold all")),
          tree),
        panel));
    if (d.selected) await showNode(panel, d.selected.node_id, d.selected);
  }

  // -- sweeps --------------------------------------------------------------------------------
  async function pageSweeps() {
    document.title = "sweeps · loopwright";
    const d = await api("sweeps");
    $main().replaceChildren(el("h1", {}, "Sweeps"), d.rows.length ? table([
      { label: "name", cell: (r) => el("a", { href: `/sweep/${enc(r.name)}`, class: "sweep-link" }, r.name) },
      { label: "tasks", key: "tasks_spec" }, { label: "grid", key: "grid" }, { label: "status", key: "status" },
      { label: "points", cls: "n", cell: (r) => `${r.done}/${r.points}` }], d.rows, { id: "sweeps" }) : el("p", { class: "muted" }, "no sweeps in this database (`loopwright sweep` makes one)"));
  }

  async function pageSweep(name) {
    document.title = `${name} · sweep · loopwright`;
    const d = await api("sweep", { name });
    const parts = [el("p", { class: "crumbs" }, el("a", { href: "/sweeps" }, "sweeps"), " / ", name), el("h1", {}, `Sweep ${name}`),
      el("p", {}, el("b", {}, "tasks "), d.tasks_spec ?? "–", el("b", {}, " grid "), d.grid ?? "–", el("b", {}, " status "), d.status),
      el("h2", {}, "points"), table([
        { label: "strategy", key: "strategy" }, { label: "model", key: "model" }, { label: "value", cell: (r) => (r.param ? `${r.param}=${r.value}` : "default") },
        { label: "seed", cls: "n", key: "seed" }, { label: "run", cell: (r) => el("a", { href: runHref(r.run_name) }, r.run_name) },
        { label: "shared", cell: (r) => (r.derived ? el("span", { title: "the first k samples of a larger run: see the table below" }, "yes") : "") }, { label: "status", key: "status" },
        { label: "graded pass", cls: "n", cell: (r) => pct(r.pass_rate) }, { label: "tokens/task", cls: "n", cell: (r) => (r.tokens_per_task == null ? "–" : num(Math.round(r.tokens_per_task))) },
        { label: "samples/task", cls: "n", cell: (r) => fix(r.calls_per_task, 2) }], d.points, { id: "points" })];
    if (d.report.note) parts.push(el("p", { class: "muted", id: "report-note" }, `no report yet: ${d.report.note}`));
    for (const t of d.report.tables) {
      parts.push(el("h2", {}, t.title), table(t.columns.map((c, i) => ({ label: c, cell: (r) => r[i] })), t.rows));
    }
    if (d.report.plots.length) {
      parts.push(el("h2", {}, "plots"), el("div", { class: "plots" }, d.report.plots.map(([file, title]) =>
        el("figure", {}, el("img", { src: `/api/sweep/plot?name=${enc(name)}&file=${enc(file)}`, alt: title }), el("figcaption", {}, title)))));
    }
    const runs = [...new Set(d.points.map((p) => p.run_name))];
    if (runs.length > 1) {
      parts.push(el("h2", {}, "compare two points task by task"), el("p", {}, runs.slice(1).map((b) =>
        el("a", { class: "kv", href: `/compare?a=${enc(runs[0])}&b=${enc(b)}` }, `${runs[0]} vs ${b}`))));
    }
    $main().replaceChildren(...parts.flat());
  }

  // -- compare -------------------------------------------------------------------------------
  async function pageCompare() {
    document.title = "compare · loopwright";
    const q = query();
    const names = (await api("runs", { limit: 500 })).rows.map((r) => [r.name, r.name]);
    const form = filterForm([{ name: "a", label: "run A", options: [["", "choose"], ...names] }, { name: "b", label: "run B", options: [["", "choose"], ...names] },
      { name: "filter", label: "show", options: [["", "all shared tasks"], ["differ", "graded differs"], ["a_only", "only A passes"], ["b_only", "only B passes"]] }]);
    if (!q.a || !q.b) { $main().replaceChildren(el("h1", {}, "Compare two runs"), form); return; }
    const d = await api("compare", { a: q.a, b: q.b, filter: q.filter, offset: q.offset, limit: q.limit || 100 });
    const s = d.summary;
    $main().replaceChildren(el("h1", {}, "Compare two runs"), form,
      el("section", { class: "summary", id: "compare-summary" }, el("div", {}, el("b", {}, "shared tasks "), num(s.shared)),
        el("div", {}, el("b", {}, "A passes "), num(s.a_passed)), el("div", {}, el("b", {}, "B passes "), num(s.b_passed)),
        el("div", {}, el("b", {}, "only A "), num(s.a_only)), el("div", {}, el("b", {}, "only B "), num(s.b_only)),
        el("div", {}, el("b", {}, "tokens A / B "), `${num(s.a_tokens)} / ${num(s.b_tokens)}`)),
      table([{ label: "task", key: "task_id" }, { label: "prompt", cell: (r) => el("span", { class: "snippet" }, r.prompt ?? "") },
        { label: "A answer", cell: (r) => el("a", { href: taskHref(d.a, r.task_id) }, el("code", {}, r.a_answer ?? "–")) }, { label: "A", cell: (r) => verdict(r.a_graded) },
        { label: "B answer", cell: (r) => el("a", { href: taskHref(d.b, r.task_id) }, el("code", {}, r.b_answer ?? "–")) }, { label: "B", cell: (r) => verdict(r.b_graded) },
        { label: "tokens A / B", cls: "n", cell: (r) => `${num(r.a_tokens)} / ${num(r.b_tokens)}` }], d.rows,
      { id: "compare", rowClass: (r) => (r.a_graded !== r.b_graded ? "disagree" : null) }), pager({ ...d, total: s.shared }));
  }

  // -- improve -------------------------------------------------------------------------------
  function anyTable(rows, id) {
    if (!rows.length) return el("p", { class: "muted" }, "empty");
    const cols = Object.keys(rows[0]);
    const cell = (c, v) => {
      if (v !== null && typeof v === "object") return JSON.stringify(v);
      // train_run / eval_run name runs of this database: link them
      if (/(^|_)run$/.test(c) && typeof v === "string" && v) return el("a", { href: runHref(v) }, v);
      return v ?? "–";
    };
    return table(cols.map((c) => ({ label: c, cell: (r) => cell(c, r[c]) })), rows, { id });
  }

  async function pageImprove() {
    document.title = "improve · loopwright";
    const d = await api("improve");
    const parts = [el("h1", {}, "Improve runs")];
    if (d.rounds === null && d.models === null) parts.push(el("p", { class: "muted", id: "no-improve" }, "no improve tables in this database (`loopwright improve` writes them)"));
    if (d.rounds !== null) parts.push(el("h2", {}, "rounds"), anyTable(d.rounds, "rounds"));
    if (d.models !== null) parts.push(el("h2", {}, "models"), anyTable(d.models, "models"));
    $main().replaceChildren(...parts.flat());
  }

  window.loopwrightPages = { task: pageTask, sweeps: pageSweeps, sweep: pageSweep, compare: pageCompare, improve: pageImprove };
})();
