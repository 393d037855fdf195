// Deputy's web console: views over the same-origin admin API, polled every second. The browser holds no
// token: its session cookie is HttpOnly, and state changes carry the session's CSRF token in a header.
"use strict";

const POLL_MS = 1000;
let csrf = "";
let lastBody = "";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "onclick" || key === "onsubmit" || key === "onchange") node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function when(value) {
  if (value === null || value === undefined || value === "") return "";
  return typeof value === "number" ? new Date(value * 1000).toISOString().replace(".000Z", "Z") : String(value);
}

async function api(method, path, body) {
  const headers = { "Accept": "application/json" };
  if (method !== "GET") headers["X-CSRF-Token"] = csrf;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, credentials: "same-origin",
                                       body: body === undefined ? undefined : JSON.stringify(body) });
  if (response.status === 401) { window.location.assign("/console/login"); throw new Error("signed out"); }
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = new Error(data.error_description || data.error || `HTTP ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return data;
}

function say(text) { document.getElementById("status").textContent = text || ""; }

// A confirmation with a required reason; resolves to the reason, or null when cancelled.
function confirmWithReason(title, text) {
  const dialog = document.getElementById("confirm");
  const reason = document.getElementById("confirm-reason");
  document.getElementById("confirm-title").textContent = title;
  document.getElementById("confirm-text").textContent = text;
  reason.value = "";
  return new Promise((resolve) => {
    const form = document.getElementById("confirm-form");
    const done = (value) => { form.onsubmit = null; dialog.close(); resolve(value); };
    form.onsubmit = (event) => { event.preventDefault(); if (reason.value.trim()) done(reason.value.trim()); };
    document.getElementById("confirm-cancel").onclick = () => done(null);
    dialog.showModal();
    reason.focus();
  });
}

async function act(title, text, call) {
  const reason = await confirmWithReason(title, text);
  if (reason === null) return;
  try {
    const result = await call(reason);
    say("");
    lastBody = "";
    await refresh();
    return result;
  } catch (error) {
    say(`${title} failed: ${error.message}`);
  }
}

const revokeTask = (task) => act("Revoke task", `Revoke task ${task.id}, its sub-tasks and their tokens?`,
  (reason) => api("POST", `/admin/tasks/${encodeURIComponent(task.id)}/revoke`, { reason }));

function revokeParty(kind, id, issuer) {
  const query = new URLSearchParams({ [kind]: id });
  if (issuer) query.set("issuer", issuer);
  return act(`Revoke ${kind}`, `Revoke everything of ${kind} ${id}${issuer ? " at " + issuer : ""}?`,
    (reason) => api("POST", `/admin/revoke?${query}`, { [kind]: id, ...(issuer ? { issuer } : {}), reason }));
}

function agentIssuer(task) { return task.agent.startsWith("spiffe://") ? null : task.agent_domain; }

function taskCard(task) {
  return el("div", { class: "task", "data-task-id": task.id },
    el("span", { class: "agent" }, task.agent), " acting for ", el("span", { class: "user" }, task.user.sub),
    " ", el("span", { class: `state ${task.state}` }, task.state),
    el("dl", {},
      el("dt", {}, "task"), el("dd", {}, task.id),
      el("dt", {}, "scope"), el("dd", {}, task.scope),
      el("dt", {}, "resources"), el("dd", {}, task.audiences.join(" ")),
      el("dt", {}, "deadline"), el("dd", {}, when(task.deadline)),
      task.purpose ? [el("dt", {}, "purpose"), el("dd", {}, task.purpose)] : null),
    el("div", { class: "actions" },
      el("a", { href: `#task/${encodeURIComponent(task.id)}` }, "Details"),
      el("button", { class: "danger", type: "button", onclick: () => revokeTask(task) }, "Revoke task"),
      el("button", { type: "button", onclick: () => revokeParty("agent", task.agent, agentIssuer(task)) },
         "Revoke agent"),
      el("button", { type: "button", onclick: () => revokeParty("user", task.user.sub, task.user.iss) },
         "Revoke user")));
}

function tree(tasks) {
  const ids = new Set(tasks.map((t) => t.id));
  const children = new Map();
  for (const task of tasks) {
    const parent = ids.has(task.parent_id) ? task.parent_id : null;
    if (!children.has(parent)) children.set(parent, []);
    children.get(parent).push(task);
  }
  const branch = (parent) => el("ul", { class: parent === null ? "tree" : "" },
    (children.get(parent) || []).map((task) => el("li", {}, taskCard(task), children.has(task.id) ? branch(task.id) : null)));
  return branch(null);
}

const views = {
  async tasks(view) {
    const data = await api("GET", "/admin/tasks?state=open&limit=1000");
    const body = JSON.stringify(data);
    if (body === lastBody) return;
    lastBody = body;
    view.replaceChildren(el("h2", {}, `Open tasks (${data.tasks.length})`),
      data.tasks.length ? tree([...data.tasks].reverse()) : el("p", { class: "empty" }, "No open task."));
  },

  async task(view, id) {
    const task = await api("GET", `/admin/tasks/${encodeURIComponent(id)}`);
    const body = JSON.stringify(task);
    if (body === lastBody) return;
    lastBody = body;
    view.replaceChildren(el("h2", {}, `Task ${task.id}`), el("div", { class: "detail" }, taskCard(task)),
      el("h2", {}, "Delegation chain"),
      el("ol", { class: "chain" }, task.chain.map((agent) => el("li", {}, agent))),
      el("h2", {}, "Sub-tasks"),
      task.children.length ? el("ul", {}, task.children.map((c) => el("li", {},
        el("a", { href: `#task/${encodeURIComponent(c)}` }, c)))) : el("p", { class: "empty" }, "None."),
      el("h2", {}, `Tokens (${task.tokens.length})`),
      table(["jti", "audience", "scope", "issued", "expires", "revoked"], task.tokens.map((t) =>
        [t.jti, t.audience, t.scope, when(t.issued_at), when(t.expires_at), when(t.revoked_at)])));
  },

  async audit(view) {
    let form = view.querySelector("form.filters");
    if (!form) {
      lastBody = "";
      const field = (name, label) => el("label", {}, label, el("input", { name, autocomplete: "off" }));
      form = el("form", { class: "filters", onsubmit: (e) => { e.preventDefault(); lastBody = ""; refresh(); } },
        field("agent", "Agent"), field("user", "User"), field("task", "Task"), field("since", "Since (ISO 8601)"),
        el("button", { type: "submit" }, "Filter"));
      view.replaceChildren(el("h2", {}, "Audit trail"), form, el("div", { class: "rows" }));
    }
    const query = new URLSearchParams({ limit: "200" });
    for (const [key, value] of new FormData(form)) {
      if (!value) continue;
      query.set(key, key === "since" && !Number.isNaN(Date.parse(value)) && !/^\d+$/.test(value)
        ? String(Math.floor(Date.parse(value) / 1000)) : value);
    }
    const data = await api("GET", `/admin/audit?${query}`);
    const body = JSON.stringify(data);
    if (body === lastBody) return;
    lastBody = body;
    view.querySelector(".rows").replaceChildren(data.events.length ? table(
      ["at", "action", "outcome", "agent", "user", "task", "reasons"],
      data.events.map((e) => [when(e.at), e.action, e.outcome, e.agent, e.user_subject ?? e.user ?? "",
                              e.task_id ?? "", (e.reasons || []).join("; ")])) : el("p", { class: "empty" }, "No event."));
  },

  async blocks(view) {
    let form = view.querySelector("form.inline");
    if (!form) {
      lastBody = "";
      form = el("form", { class: "inline", onsubmit: (e) => { e.preventDefault(); addBlock(form); } },
        el("label", {}, "Kind", el("select", { name: "kind" }, ["agent", "trust_domain", "workload_issuer", "user"]
          .map((k) => el("option", { value: k }, k)))),
        el("label", {}, "Identifier", el("input", { name: "party", required: "", autocomplete: "off", size: "40" })),
        el("label", {}, "Issuer (users, non-SPIFFE agents)", el("input", { name: "issuer", autocomplete: "off" })),
        el("label", {}, "For", el("input", { name: "for", value: "2h", required: "", size: "6" })),
        el("button", { type: "submit", class: "danger" }, "Add block"));
      view.replaceChildren(el("h2", {}, "Blocks"), form, el("div", { class: "rows" }));
    }
    let blocks = [];
    let note = "No active block.";
    try {
      blocks = (await api("GET", "/admin/blocks")).blocks;
    } catch (error) {
      if (error.status !== 404) throw error;
      note = "This gateway has no blocks API.";
    }
    const body = JSON.stringify(blocks) + note;
    if (body === lastBody) return;
    lastBody = body;
    view.querySelector(".rows").replaceChildren(blocks.length ? table(
      ["id", "kind", "party", "issuer", "reason", "created", "expires", "by", ""],
      blocks.map((b) => [b.id, b.kind, b.party, b.issuer ?? "", b.reason ?? "", when(b.created_at),
        when(b.expires_at), b.created_by ?? "", el("button", { type: "button", onclick: () => act("Lift block",
          `Lift the block on ${b.kind} ${b.party}?`, (reason) => api("DELETE",
            `/admin/blocks/${encodeURIComponent(b.id)}`, { reason })) }, "Lift")])) : el("p", { class: "empty" }, note));
  },
};

function addBlock(form) {
  const data = Object.fromEntries(new FormData(form));
  const body = { [data.kind]: data.party, for: /^\d+$/.test(data.for) ? Number(data.for) : data.for };
  if (data.issuer) body.issuer = data.issuer;
  return act("Add block", `Block ${data.kind} ${data.party} for ${data.for}, and revoke everything it holds?`,
    (reason) => api("POST", "/admin/blocks", { ...body, reason }));
}

function table(headings, rows) {
  return el("table", {}, el("thead", {}, el("tr", {}, headings.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.map((row) => el("tr", {}, row.map((cell) => el("td", {}, cell ?? ""))))));
}

function route() {
  const [name, ...rest] = (window.location.hash.slice(1) || "tasks").split("/");
  return views[name] ? [name, decodeURIComponent(rest.join("/"))] : ["tasks", ""];
}

let current = "";
async function refresh() {
  const [name, arg] = route();
  const view = document.getElementById("view");
  if (`${name}/${arg}` !== current) {
    current = `${name}/${arg}`;
    lastBody = "";
    view.replaceChildren();
    view.dataset.view = name;
    for (const link of document.querySelectorAll("nav a")) link.classList.toggle("active", link.dataset.view === name);
  }
  try {
    await views[name](view, arg);
    if (!document.getElementById("status").textContent.includes("failed")) say("");
  } catch (error) {
    if (error.message !== "signed out") say(`Could not load: ${error.message}`);
  }
}

async function start() {
  const session = await api("GET", "/console/session");
  csrf = session.csrf;
  document.getElementById("admin").textContent = `signed in as ${session.admin}`;
  document.getElementById("logout").addEventListener("click", async () => {
    await api("POST", "/console/logout");
    window.location.assign("/console/login");
  });
  window.addEventListener("hashchange", refresh);
  await refresh();
  setInterval(refresh, POLL_MS);
}

start();
