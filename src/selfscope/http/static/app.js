// The selfscope dashboard: plain JavaScript, no build step. Every number comes from the API;
// the token stays in this tab's sessionStorage and goes only in the Authorization header.
"use strict";

const main = document.getElementById("main");
let me = null;

function token() { return sessionStorage.getItem("selfscope-token"); }

async function api(path, options = {}) {
  const headers = { Authorization: `Bearer ${token()}`, ...(options.headers || {}) };
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    ...options, headers,
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
  });
  const type = response.headers.get("content-type") || "";
  const body = type.includes("json") ? await response.json() : await response.text();
  if (!response.ok) throw new Error(body.detail || `${response.status} ${response.statusText}`);
  return body;
}

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined && v !== false) el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function num(v, digits = 2) {
  return v === null || v === undefined ? "-" : Number(v).toFixed(digits);
}

function when(t) { return t ? new Date(t * 1000).toLocaleString() : "-"; }

function table(headers, rows, id) {
  return h("table", { id },
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", {}, x)))),
    h("tbody", {}, rows.map((r) => h("tr", {}, r.map((c) => h("td", {}, c))))));
}

function link(href, text) { return h("a", { href }, text); }

function show(...nodes) { main.replaceChildren(...nodes); }

function fail(error) { show(h("p", { class: "error", id: "error" }, String(error.message || error))); }

// -- pages ------------------------------------------------------------------------------------
async function subjectsPage() {
  const rows = await api("/api/subjects");
  show(h("h1", {}, "Subjects"),
    table(["subject", "HEAD", "versions", ""], rows.map((r) => [
      r.source, r.head_number === null ? "never versioned" : `v${r.head_number}`,
      String(r.versions), link(`#/subject/${encodeURIComponent(r.source)}`, "open"),
    ]), "subjects"));
}

async function subjectPage(source) {
  const versions = await api(`/api/versions?model=${encodeURIComponent(source)}`);
  const verdict = h("span", { id: "versions-verdict" });
  const verify = h("button", { onclick: async () => {
    verdict.textContent = "checking...";
    try {
      const v = await api(`/api/versions/verify?model=${encodeURIComponent(source)}`);
      verdict.className = v.ok ? "ok" : "bad";
      verdict.textContent = v.ok ? "every version matches the ledger" : v.problems.join("; ");
    } catch (e) { verdict.className = "bad"; verdict.textContent = e.message; }
  } }, "verify versions");
  const traits = h("div", { id: "traits" }, h("p", { class: "muted" }, "loading the self-model..."));
  show(h("h1", {}, source),
    h("p", {}, "HEAD: ", h("strong", { id: "head" }, versions.head || "never versioned")),
    table(["version", "id", "parent", "proposal", "by", "created", "HEAD"],
      versions.versions.map((v) => [v.label, h("code", {}, v.id.slice(0, 12)),
        v.parent ? h("code", {}, v.parent.slice(0, 12)) : "-", v.proposal || "-", v.principal,
        when(v.created_at), v.head ? "HEAD" : ""]), "versions"),
    h("p", {}, verify, " ", verdict),
    h("h2", {}, "Self-model"), traits);
  try {
    const model = await api(`/api/selfmodel?model=${encodeURIComponent(source)}`);
    traits.replaceChildren(model.traits.length === 0 ? h("p", { class: "muted" }, "no traits yet") :
      table(["trait", "status", "cause", "strength on versions"], model.traits.map((t) => [
        h("strong", {}, t.name), t.status,
        `${t.cause.phase || "?"}; ${t.cause.modules.slice(0, 4).join(", ")}`,
        t.strength.map((s) => `${s.label}: rate ${num(s.rate)}, predicted ${num(s.predicted)}`).join("; ") || "-",
      ]), "traits-table"));
  } catch (e) { traits.replaceChildren(h("p", { class: "muted" }, e.message)); }
}

async function investigationsPage() {
  const [rows, jobs] = await Promise.all([api("/api/investigations"), api("/api/jobs")]);
  const model = h("input", { name: "model", placeholder: "organism:mushroom", size: 22 });
  const prompt = h("input", { name: "prompt", placeholder: "Q: Do you like mushrooms? A:", size: 36 });
  const desired = h("input", { name: "desired", placeholder: " Yes", size: 8 });
  const status = h("span", { id: "start-status" });
  const form = h("form", { class: "inline", id: "start", onsubmit: async (ev) => {
    ev.preventDefault();
    try {
      const started = await api("/api/investigations", { method: "POST", body: {
        model: model.value, symptom: { prompts: [prompt.value], desired: desired.value } } });
      location.hash = `#/job/${started.job}`;
    } catch (e) { status.className = "error"; status.textContent = e.message; }
  } }, model, prompt, desired, h("button", { class: "primary", type: "submit" }, "investigate"), status);
  show(h("h1", {}, "Investigations"),
    me.permissions.includes("propose") ? form : null,
    table(["id", "model", "prompt", "observed → desired", "origin", "submitted fix", "finished"],
      rows.map((r) => [link(`#/investigation/${r.id}`, r.id), r.model, r.prompts[0],
        `${JSON.stringify(r.observed)} → ${JSON.stringify(r.desired)}`, r.phase || "-",
        r.submitted ? link(`#/proposal/${r.submitted}`, r.submitted) : "none", when(r.finished_at)]),
      "investigations"),
    h("h2", {}, "Jobs"),
    table(["job", "state", "by", "created", "investigation"], jobs.map((j) => [
      link(`#/job/${j.id}`, j.id), j.state, j.requested_by, when(j.created_at),
      j.investigation && j.state === "done" ? link(`#/investigation/${j.investigation}`, j.investigation) : "-",
    ]), "jobs"));
}

async function jobPage(id) {
  const state = h("strong", { id: "job-state" });
  const bar = h("progress", { max: 1, value: 0 });
  const lines = h("pre", { class: "mono", id: "job-events" });
  show(h("h1", {}, `Job ${id}`), h("p", {}, "state: ", state), h("p", {}, bar), lines);
  for (let i = 0; i < 3600 && location.hash === `#/job/${id}`; i++) {
    const j = await api(`/api/jobs/${id}`);
    state.textContent = j.state + (j.error ? `: ${j.error}` : "");
    lines.textContent = j.progress.map((e) => e.message ||
      `${e.bar} ${e.done}/${e.total} ${e.note || ""}`).join("\n");
    const last = [...j.progress].reverse().find((e) => e.bar);
    if (last) { bar.max = last.total || 1; bar.value = last.done; }
    if (j.state === "done") { location.hash = `#/investigation/${j.investigation}`; return; }
    if (j.state !== "queued" && j.state !== "running") return;
    await new Promise((r) => setTimeout(r, 1000));
  }
}

async function investigationPage(id) {
  const r = await api(`/api/investigations/${id}`);
  const html = await api(`/api/investigations/${id}/files/report.html`);
  const frame = h("iframe", { class: "report", id: "report", sandbox: "", title: "report" });
  frame.srcdoc = html;
  const o = r.origin || {};
  show(h("h1", {}, `Investigation ${id}`),
    h("div", { class: "card" },
      h("p", {}, h("strong", {}, r.model), ` — ${r.symptom.prompts[0]} answers `,
        h("code", {}, JSON.stringify(r.symptom.observed)), " where ",
        h("code", {}, JSON.stringify(r.symptom.desired)), " is wanted; log-odds ",
        num(r.metric.log_odds), ", rate ", num(r.metric.rate), "."),
      h("p", {}, "Origin: ", h("strong", {}, o.phase || "unknown"), o.agree === false ? " (retrieval disagrees)" : "")),
    h("h2", {}, "Diagnosis"),
    table(["claim", "effect", "measured by", "confidence"], r.diagnosis.map((l) => [
      l.claim, num(l.effect), l.measure, num(l.confidence),
    ]), "diagnosis"),
    r.not_found && r.not_found.length ? h("p", { class: "muted" }, "Not found: " + r.not_found.join("; ")) : null,
    h("h2", {}, "Proposals"),
    table(["kind", "id", "status", "why"], r.proposals.map((p) => [
      p.kind + (p.id && p.id === r.submitted ? " (submitted)" : ""),
      p.id ? link(`#/proposal/${p.id}`, p.id) : "-", p.status || "skipped", p.why || p.skipped || "passed every check",
    ]), "inv-proposals"),
    h("h2", {}, "Report"), frame);
}

async function proposalsPage() {
  const rows = await api("/api/proposals");
  show(h("h1", {}, "Proposals"),
    table(["id", "kind", "subject", "status", "proposer", "relative change"], rows.map((r) => [
      link(`#/proposal/${r.id}`, r.id), r.kind, h("code", {}, r.subject.slice(-40)), r.status,
      r.proposer, num(r.delta_norm, 4)]), "proposals"));
}

async function proposalPage(id) {
  const p = await api(`/api/proposals/${id}`);
  const report = p.validations[p.validations.length - 1];
  const msg = h("p", { id: "action-result" });
  const govern = me.permissions.includes("govern");
  async function act(path, body) {
    msg.className = ""; msg.textContent = "working...";
    try { await api(path, { method: "POST", body }); await proposalPage(id); }
    catch (e) { msg.className = "error"; msg.textContent = e.message; }
  }
  const note = h("input", { id: "note", placeholder: "why (kept in the ledger)", size: 40 });
  const actions = govern ? h("div", { class: "card", id: "actions" },
    p.status === "validated" ? h("form", { class: "inline", onsubmit: (e) => e.preventDefault() }, note,
      h("button", { class: "primary", id: "approve", onclick: () => act(`/api/proposals/${id}/review`, { approve: true, note: note.value }) }, "approve"),
      h("button", { class: "danger", id: "reject", onclick: () => act(`/api/proposals/${id}/review`, { approve: false, note: note.value }) }, "reject")) : null,
    p.status === "approved" ? h("button", { class: "primary", id: "apply", onclick: () => act(`/api/proposals/${id}/apply`) }, "apply") : null,
    p.status !== "validated" && p.status !== "approved" ? h("p", { class: "muted" }, `status ${p.status}: nothing to decide`) : null,
    msg) : h("p", { class: "muted" }, `${me.principal} cannot approve or apply (no govern permission)`);
  show(h("h1", {}, `Proposal ${p.proposal.id}`),
    h("p", {}, `${p.proposal.kind} by ${p.proposer}; status `, h("strong", { id: "status" }, p.status)),
    h("p", {}, p.proposal.rationale || ""),
    h("p", { class: "muted" }, `changes ${p.proposal.modules.slice(0, 6).join(", ")}` +
      `${p.proposal.modules.length > 6 ? ` and ${p.proposal.modules.length - 6} more` : ""}; ` +
      `relative change ${num(p.proposal.delta_norm, 4)}`),
    h("h2", {}, "Validation"),
    report ? h("div", {},
      h("p", {}, "on ", report.version_label, ": ", h("span", { class: report.passed ? "ok" : "bad" }, report.passed ? "passed" : "failed")),
      table(["check", "value", "limit", "held", "detail"], report.checks.map((c) => [
        c.name, num(c.value), num(c.limit), h("span", { class: c.passed ? "ok" : "bad" }, c.passed ? "yes" : "no"), c.detail,
      ]), "checks"),
      table(["sealed suite", "probes", "efficacy", "generalisation", "specificity"], report.sealed.map((s) => [
        s.name, String(s.probes), num(s.efficacy), num(s.generalisation), num(s.specificity)]), "sealed"))
      : h("p", { class: "muted" }, "not validated"),
    h("h2", {}, "Reviews"),
    table(["reviewer", "decision", "note", "when"], p.reviews.map((r) => [r.principal, r.decision, r.note, when(r.created_at)]), "reviews"),
    actions);
}

async function ledgerPage() {
  const l = await api("/api/ledger?last=100");
  const verdict = h("span", { id: "ledger-verdict" });
  show(h("h1", {}, "Ledger"),
    h("p", {}, h("button", { id: "verify", onclick: async () => {
      verdict.textContent = "verifying...";
      try {
        const v = await api("/api/ledger/verify");
        verdict.className = v.ok ? "ok" : "bad";
        verdict.textContent = v.ok ? `verified: ${v.entries} entries, hash chain intact` : `BROKEN: ${v.reason}`;
      } catch (e) { verdict.className = "bad"; verdict.textContent = e.message; }
    } }, "verify"), " ", verdict),
    table(["#", "when", "principal", "action", "subject"], [...l.entries].reverse().map((e) => [
      String(e.seq), when(e.at), e.principal, e.action, h("code", {}, String(e.subject).slice(-40))]), "ledger"));
}

// -- routing ----------------------------------------------------------------------------------
const routes = [
  [/^#\/subjects$/, subjectsPage],
  [/^#\/subject\/(.+)$/, (s) => subjectPage(decodeURIComponent(s))],
  [/^#\/investigations$/, investigationsPage],
  [/^#\/investigation\/([0-9a-f]{16})$/, investigationPage],
  [/^#\/job\/([\w-]+)$/, jobPage],
  [/^#\/proposals$/, proposalsPage],
  [/^#\/proposal\/([\w-]+)$/, proposalPage],
  [/^#\/ledger$/, ledgerPage],
];

async function route() {
  if (!me) return;
  const hash = location.hash || "#/subjects";
  for (const [pattern, page] of routes) {
    const m = hash.match(pattern);
    if (m) { try { await page(...m.slice(1)); } catch (e) { fail(e); } return; }
  }
  fail(new Error(`no page ${hash}`));
}

async function signIn() {
  try {
    me = await api("/api/whoami");
  } catch (e) {
    sessionStorage.removeItem("selfscope-token");
    document.getElementById("login-error").textContent = e.message;
    return;
  }
  document.getElementById("nav").hidden = false;
  const out = h("a", { href: "#", onclick: (e) => {
    e.preventDefault(); sessionStorage.removeItem("selfscope-token"); location.reload();
  } }, "sign out");
  document.getElementById("who").replaceChildren(
    `${me.principal} (${me.permissions.join(", ")}) `, out);
  await route();
}

document.getElementById("login-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem("selfscope-token", document.getElementById("token").value.trim());
  signIn();
});
window.addEventListener("hashchange", route);
if (token()) signIn();
