/* vxnet web UI: sign-in, data loading, live updates, forms, details and the operator view.
 *
 * The page is an ordinary API client: it signs in at /identity/v3/auth/tokens, keeps the token in
 * sessionStorage, and reads and writes through /v2.0 with X-Auth-Token, so it sees and may do
 * exactly what the REST API allows its user. `/ui/events` (SSE, token in the query string) says
 * which collections changed; the page then re-reads those collections (level-triggered: on every
 * (re)connect it re-reads everything, so a missed notification only delays an update).
 * API errors are shown as the API's own NeutronError message. No API text is ever inserted as
 * HTML (textContent only).
 */
(function () {
  "use strict";
  const COLLECTIONS = ["networks", "subnets", "ports", "routers", "floatingips", "security-groups"];
  const VM_OWNER = /^compute:/;
  const ROUTER_IF = /^network:(router_interface|router_interface_distributed)$/;
  const S = {
    auth: null,            // {token, user, projectId, projectName, roles, expiresAt}
    data: {}, missing: {}, projects: [],
    view: null,            // project id shown (admin: "" = all projects)
    selected: null,        // {kind, id}
    es: null, reloadTimer: null, pending: new Set(), renders: 0, revision: 0,
  };
  window.vxState = S;

  const $ = sel => document.querySelector(sel);
  const isAdmin = () => !!S.auth && S.auth.roles.includes("admin");

  // --- API ---------------------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, type, message) { super(message); this.status = status; this.type = type; }
  }

  async function api(method, path, body) {
    const headers = { "Accept": "application/json" };
    if (S.auth) headers["X-Auth-Token"] = S.auth.token;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let res;
    try {
      res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    } catch (e) {
      throw new ApiError(0, "NetworkError", "The server cannot be reached: " + e.message);
    }
    if (res.status === 204) return null;
    let json = null;
    try { json = await res.json(); } catch (e) { json = null; }
    if (!res.ok) {
      const ne = json && (json.NeutronError || json.error);
      const msg = ne ? (ne.message || ne.title || JSON.stringify(ne)) : `HTTP ${res.status}`;
      if (res.status === 401 && S.auth && !path.startsWith("/identity/v3/auth/tokens")) {
        signOut("Your session has expired; please sign in again.");
      }
      throw new ApiError(res.status, ne && ne.type, msg);
    }
    return { json, headers: res.headers };
  }

  // --- sign-in -----------------------------------------------------------------------------------
  async function signIn(user, password, project) {
    const body = { auth: { identity: { methods: ["password"], password: { user: {
      name: user, domain: { id: "default" }, password } } } } };
    if (project) body.auth.scope = { project: { name: project, domain: { id: "default" } } };
    const r = await api("POST", "/identity/v3/auth/tokens", body);
    const t = r.json.token;
    S.auth = {
      token: r.headers.get("X-Subject-Token"), user: t.user.name,
      projectId: t.project ? t.project.id : "", projectName: t.project ? t.project.name : "",
      roles: (t.roles || []).map(x => x.name), expiresAt: Date.parse(t.expires_at),
    };
    sessionStorage.setItem("vxnet.auth", JSON.stringify(S.auth));
  }

  function signOut(message) {
    if (S.es) { S.es.close(); S.es = null; }
    S.auth = null; S.data = {}; S.selected = null;
    sessionStorage.removeItem("vxnet.auth");
    $("#app-view").hidden = true;
    $("#login-view").hidden = false;
    $("#login-error").textContent = message || "";
    $("#login-user").focus();
  }

  async function start() {
    $("#login-view").hidden = true;
    $("#app-view").hidden = false;
    $("#who").textContent = `${S.auth.user} @ ${S.auth.projectName}` + (isAdmin() ? " (admin)" : "");
    S.view = isAdmin() ? "" : S.auth.projectId;
    const readOnly = !isAdmin() && S.auth.roles.every(r => r === "reader");
    for (const f of document.querySelectorAll("form[data-action] :is(input, select, button)")) f.disabled = readOnly;
    $("#readonly-note").hidden = !readOnly;
    $("#admin-pane").hidden = !isAdmin();
    $("#project-pick").hidden = !isAdmin();
    if (isAdmin()) await loadProjects();
    connect();
    await reload(null);
  }

  async function loadProjects() {
    try {
      const r = await api("GET", "/identity/v3/projects");
      S.projects = r.json.projects;
    } catch (e) { S.projects = []; }
    const sel = $("#project-select");
    const opts = [["", "All projects"]].concat(S.projects.map(p => [p.id, p.name]));
    sel.replaceChildren(...opts.map(([v, l]) => { const o = new Option(l, v); return o; }));
    sel.value = S.view;
  }

  // --- data --------------------------------------------------------------------------------------
  async function fetchCollection(name) {
    const key = name.replace(/-/g, "_");
    try {
      // The server caps a page ([server] max_page_size): follow `next` links to the end.
      let r = await api("GET", `/v2.0/${name}`);
      const all = [];
      for (;;) {
        const page = r.json[key] || [];
        all.push(...page);
        const next = (r.json[`${key}_links`] || []).find(l => l.rel === "next");
        if (!page.length || !next) break;
        const u = new URL(next.href, location.href);
        r = await api("GET", u.pathname + u.search);
      }
      S.missing[name] = false;
      return all;
    } catch (e) {
      if (e.status === 404 || e.status === 405) { S.missing[name] = true; return []; }
      throw e;
    }
  }

  /* Re-read `names` (null = everything) and redraw. */
  async function reload(names) {
    if (!S.auth) return;
    const all = COLLECTIONS.concat(isAdmin() ? ["agents"] : []);
    const want = names ? all.filter(n => names.has(n)) : all;
    try {
      const got = await Promise.all(want.map(fetchCollection));
      want.forEach((n, i) => { S.data[n] = got[i]; });
      draw();
    } catch (e) {
      if (S.auth) showBanner(e.message);
    }
  }

  function collectionsFor(stored) {
    const c = stored.replace(/_/g, "-");
    if (c === "subnets" || c === "networks") return ["subnets", "networks"];
    if (c === "security-group-rules") return ["security-groups"];
    if (COLLECTIONS.includes(c) || c === "agents") return [c];
    return COLLECTIONS;
  }

  function scheduleReload(changes) {
    for (const ch of changes) for (const c of collectionsFor(ch.collection)) S.pending.add(c);
    if (S.reloadTimer) return;
    S.reloadTimer = setTimeout(() => {
      const names = S.pending;
      S.pending = new Set(); S.reloadTimer = null;
      reload(names);
    }, 40);
  }

  // --- live updates ------------------------------------------------------------------------------
  function connect() {
    if (S.es) S.es.close();
    const es = new EventSource("/ui/events?token=" + encodeURIComponent(S.auth.token));
    S.es = es;
    es.addEventListener("ready", ev => {
      S.revision = JSON.parse(ev.data).revision;
      S.connects = (S.connects || 0) + 1;
      setLive(true);
      reload(null);   // level-triggered: everything after each (re)connect
    });
    es.addEventListener("change", ev => {
      const d = JSON.parse(ev.data);
      S.revision = d.revision;
      scheduleReload(d.changes);
    });
    es.onerror = () => {
      setLive(false);
      if (es.readyState === EventSource.CLOSED && S.es === es) {
        if (S.auth && Date.now() >= S.auth.expiresAt) { signOut("Your session has expired; please sign in again."); return; }
        setTimeout(() => { if (S.es === es && S.auth) connect(); }, 2000);
      }
    };
  }

  function setLive(on) {
    const el = $("#live");
    el.textContent = on ? "live" : "reconnecting…";
    el.classList.toggle("on", on);
  }

  // --- drawing -----------------------------------------------------------------------------------
  function inView(o) { return !S.view || o.project_id === S.view; }

  /* Where the keyboard focus is, in terms that survive a redraw. */
  function focusKey() {
    const a = document.activeElement;
    if (!a || a === document.body) return null;
    const g = a.closest && a.closest("#graph [data-kind][data-id]");
    if (g) return { sel: `#graph [data-kind="${CSS.escape(g.dataset.kind)}"][data-id="${CSS.escape(g.dataset.id)}"]` };
    for (const box of ["#details-body", "#sg-list"]) {
      const c = $(box);
      if (c.contains(a)) return { box, index: [...c.querySelectorAll("button")].indexOf(a) };
    }
    return null;
  }

  function restoreFocus(key) {
    if (!key) return;
    let target = null;
    if (key.sel) target = document.querySelector(key.sel);
    else if (key.index >= 0) target = $(key.box).querySelectorAll("button")[key.index] || null;
    if (target && document.activeElement !== target) target.focus({ preventScroll: true });
  }

  function draw() {
    const focus = focusKey();
    const graph = $("#graph");
    const names = isAdmin() && !S.view ? Object.fromEntries(S.projects.map(p => [p.id, p.name])) : null;
    const model = VxTopology.buildModel(S.data, { projectId: S.view || null, projectNames: names });
    const width = graph.clientWidth || 800;
    VxTopology.render(graph, VxTopology.layout(model, width), select, S.selected && S.selected.id);
    graph.dataset.ready = "true";
    S.renders++;
    graph.dataset.renders = String(S.renders);
    fillSelects();
    drawDetails();
    drawSecurityGroups();
    if (isAdmin()) drawHosts();
    const gone = Object.keys(S.missing).filter(k => S.missing[k]);
    $("#agents-note").textContent = gone.length ? `Not available on this server: ${gone.join(", ")}.` : "";
    restoreFocus(focus);
  }

  function select(kind, id) {
    S.selected = { kind, id };
    document.activeElement && document.activeElement.blur && document.activeElement.blur();
    draw();
    const body = $("#details");
    body.scrollIntoView({ block: "nearest" });
    const first = body.querySelector("button");
    if (first) first.focus(); else body.focus();
  }

  function h(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "onclick") e.addEventListener("click", v);
      else if (k === "class") e.className = v;
      else e.setAttribute(k, v);
    }
    for (const c of children) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
    return e;
  }

  function findAny(kind, id) {
    const coll = { network: "networks", external: "networks", router: "routers", port: "ports" }[kind];
    return (S.data[coll] || []).find(o => o.id === id);
  }

  function kv(rows) {
    return h("dl", { class: "kv" }, ...rows.filter(r => r[1] !== undefined && r[1] !== null && r[1] !== "")
      .flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
  }

  function action(label, fn, cls) {
    return h("button", { type: "button", class: cls || "danger", onclick: async ev => {
      const btn = ev.currentTarget;
      btn.disabled = true;
      try { await fn(); clearBanner(); } catch (e) { showBanner(e.message); } finally { btn.disabled = false; }
    } }, label);
  }

  async function afterWrite(names) { await reload(new Set(names)); }

  function drawDetails() {
    const out = $("#details-body");
    const sel = S.selected;
    const obj = sel && findAny(sel.kind, sel.id);
    if (!obj) { out.replaceChildren(h("p", { class: "muted" }, sel ? "That object is gone." : "Nothing selected.")); return; }
    const nets = S.data.networks || [];
    const subnets = (S.data.subnets || []).filter(s => s.network_id === obj.id);
    const fips = S.data.floatingips || [];
    if (sel.kind === "network" || sel.kind === "external") {
      out.replaceChildren(
        h("h3", {}, (sel.kind === "external" ? "External network " : "Network ") + (obj.name || obj.id)),
        kv([["ID", obj.id], ["Status", obj.status], ["Project", projectName(obj.project_id)], ["MTU", obj.mtu],
            ["VNI", obj["provider:segmentation_id"]], ["Shared", obj.shared ? "yes" : ""]]),
        h("h4", {}, "Subnets"),
        subnets.length ? h("ul", { class: "plain" }, ...subnets.map(s => h("li", {},
          `${s.cidr} (${s.ip_version === 6 ? "IPv6 " + (s.ipv6_address_mode || s.ipv6_ra_mode || "static") + ", " : ""}`
            + `gateway ${s.gateway_ip || "none"}${s.name ? ", " + s.name : ""}) `,
          action("Delete subnet", async () => { await api("DELETE", `/v2.0/subnets/${s.id}`); await afterWrite(["subnets", "networks"]); }, "danger small"))))
          : h("p", { class: "muted" }, "none"),
        h("div", { class: "actions" }, action("Delete network", async () => {
          await api("DELETE", `/v2.0/networks/${obj.id}`);
          S.selected = null;
          await afterWrite(["networks", "subnets", "ports"]);
        })));
    } else if (sel.kind === "router") {
      const ifaces = (S.data.ports || []).filter(p => p.device_id === obj.id && ROUTER_IF.test(p.device_owner || ""));
      const gw = obj.external_gateway_info;
      const gwNet = gw && nets.find(n => n.id === gw.network_id);
      out.replaceChildren(
        h("h3", {}, "Router " + (obj.name || obj.id)),
        kv([["ID", obj.id], ["Status", obj.status], ["Project", projectName(obj.project_id)],
            ["Gateway", gw ? `${gwNet ? gwNet.name : gw.network_id} ${(gw.external_fixed_ips || []).map(f => f.ip_address).join(", ")}` : "none"]]),
        h("h4", {}, "Interfaces"),
        ifaces.length ? h("ul", { class: "plain" }, ...ifaces.map(p => h("li", {},
          `${netName(p.network_id)}: ${(p.fixed_ips || []).map(f => f.ip_address).join(", ")} `,
          action("Remove interface", async () => {
            await api("PUT", `/v2.0/routers/${obj.id}/remove_router_interface`, { port_id: p.id });
            await afterWrite(["ports", "routers"]);
          }, "danger small"))))
          : h("p", { class: "muted" }, "none"),
        h("div", { class: "actions" },
          gw ? action("Clear gateway", async () => {
            await api("PUT", `/v2.0/routers/${obj.id}`, { router: { external_gateway_info: {} } });
            await afterWrite(["routers", "ports"]);
          }, "secondary") : null,
          action("Delete router", async () => {
            await api("DELETE", `/v2.0/routers/${obj.id}`);
            S.selected = null;
            await afterWrite(["routers", "ports"]);
          })));
    } else if (sel.kind === "port") {
      const mine = fips.filter(f => f.port_id === obj.id);
      out.replaceChildren(
        h("h3", {}, "Port " + (obj.name || obj.id)),
        kv([["ID", obj.id], ["Network", netName(obj.network_id)], ["Status", obj.status],
            ["IPs", (obj.fixed_ips || []).map(f => f.ip_address).join(", ")], ["MAC", obj.mac_address],
            ["Host", obj["binding:host_id"]], ["Device", `${obj.device_owner || ""} ${obj.device_id || ""}`.trim()],
            ["Project", projectName(obj.project_id)]]),
        h("h4", {}, "Floating IPs"),
        mine.length ? h("ul", { class: "plain" }, ...mine.map(f => h("li", {}, `${f.floating_ip_address} `,
          action("Detach", async () => {
            await api("PUT", `/v2.0/floatingips/${f.id}`, { floatingip: { port_id: null } });
            await afterWrite(["floatingips"]);
          }, "secondary small"),
          action("Release", async () => { await api("DELETE", `/v2.0/floatingips/${f.id}`); await afterWrite(["floatingips"]); }, "danger small"))))
          : h("p", { class: "muted" }, "none (use the Floating IP form to attach one)"));
    }
    if (sel.kind === "external") {
      const mine = fips.filter(f => f.floating_network_id === obj.id && inView(f));
      out.append(h("h4", {}, "Floating IPs"), mine.length ? h("ul", { class: "plain" }, ...mine.map(f => h("li", {},
        `${f.floating_ip_address} ${f.port_id ? "→ " + (f.fixed_ip_address || f.port_id) : "(free)"} `,
        action("Release", async () => { await api("DELETE", `/v2.0/floatingips/${f.id}`); await afterWrite(["floatingips"]); }, "danger small"))))
        : h("p", { class: "muted" }, "none"));
    }
  }

  function netName(id) {
    const n = (S.data.networks || []).find(x => x.id === id);
    return n ? (n.name || n.id) : id;
  }

  function projectName(id) {
    const p = S.projects.find(x => x.id === id);
    if (p) return p.name;
    if (S.auth && id === S.auth.projectId) return S.auth.projectName;
    return id;
  }

  function drawSecurityGroups() {
    const out = $("#sg-list");
    const groups = (S.data["security-groups"] || []).filter(inView);
    if (S.missing["security-groups"]) { out.replaceChildren(h("p", { class: "muted" }, "Security groups are not available on this server.")); return; }
    out.replaceChildren(...groups.map(g => h("div", { class: "sg" },
      h("h4", {}, g.name + (isAdmin() && !S.view ? ` (${projectName(g.project_id)})` : "")),
      h("ul", { class: "plain" }, ...(g.security_group_rules || []).map(r => h("li", {},
        ruleText(r) + " ",
        action("Delete rule", async () => {
          await api("DELETE", `/v2.0/security-group-rules/${r.id}`);
          await afterWrite(["security-groups"]);
        }, "danger small")))))));
  }

  function ruleText(r) {
    const ports = r.port_range_min != null ? (r.port_range_min === r.port_range_max ? ` ${r.port_range_min}` : ` ${r.port_range_min}-${r.port_range_max}`) : "";
    const remote = r.remote_ip_prefix ? ` ${r.direction === "ingress" ? "from" : "to"} ${r.remote_ip_prefix}`
      : r.remote_group_id ? ` ${r.direction === "ingress" ? "from" : "to"} group ${r.remote_group_id.slice(0, 8)}` : "";
    return `${r.direction} ${r.ethertype} ${r.protocol || "any"}${ports}${remote}`;
  }

  // --- operator view -----------------------------------------------------------------------------
  function heartbeatAge(a) {
    const ts = a.heartbeat_timestamp;
    if (!ts) return null;
    let t = String(ts).replace(" ", "T");
    if (!/[zZ]|[+-]\d\d:?\d\d$/.test(t)) t += "Z";
    const ms = Date.parse(t);
    return Number.isNaN(ms) ? null : Math.max(0, (Date.now() - ms) / 1000);
  }

  function drawHosts() {
    const agents = S.data.agents || [];
    const ports = S.data.ports || [];
    const nets = Object.fromEntries((S.data.networks || []).map(n => [n.id, n]));
    const hosts = new Map();
    const host = name => {
      if (!hosts.has(name)) hosts.set(name, { name, agents: [], ports: 0, vnis: new Set() });
      return hosts.get(name);
    };
    for (const a of agents) host(a.host).agents.push(a);
    for (const p of ports) {
      const hn = p["binding:host_id"];
      if (!hn) continue;
      const e = host(hn);
      e.ports++;
      const n = nets[p.network_id];
      if (n && n["provider:segmentation_id"] != null) e.vnis.add(n["provider:segmentation_id"]);
    }
    const rows = [...hosts.values()].sort((a, b) => a.name.localeCompare(b.name)).map(e => {
      const alive = e.agents.length ? e.agents.every(a => a.alive) : null;
      const ages = e.agents.map(heartbeatAge).filter(x => x !== null);
      const age = ages.length ? Math.min(...ages) : null;
      return h("tr", { "data-host": e.name },
        h("th", { scope: "row" }, e.name),
        h("td", {}, e.agents.map(a => a.agent_type || a.binary).join(", ") || "none"),
        h("td", { class: alive === null ? "muted" : alive ? "ok-t" : "bad-t" }, alive === null ? "no agent" : alive ? "alive" : "DOWN"),
        h("td", { "data-age": age === null ? "" : age.toFixed(1) }, age === null ? "–" : fmtAge(age)),
        h("td", {}, String(e.ports)),
        h("td", {}, [...e.vnis].sort((a, b) => a - b).join(", ") || "–"));
    });
    const tbody = $("#hosts-table tbody");
    tbody.replaceChildren(...(rows.length ? rows : [h("tr", {}, h("td", { colspan: "6", class: "muted" }, "No hosts or agents registered yet."))]));
  }

  function fmtAge(s) {
    if (s < 90) return `${Math.round(s)} s`;
    if (s < 5400) return `${Math.round(s / 60)} min`;
    return `${Math.round(s / 3600)} h`;
  }

  // --- forms -------------------------------------------------------------------------------------
  function optionsFor(kind) {
    const nets = S.data.networks || [];
    const view = o => inView(o);
    switch (kind) {
      case "networks-own": return nets.filter(n => !n["router:external"] && (isAdmin() ? view(n) : n.project_id === S.auth.projectId)).map(n => [n.id, n.name || n.id]);
      case "networks-external": return nets.filter(n => n["router:external"]).map(n => [n.id, n.name || n.id]);
      case "routers": return (S.data.routers || []).filter(view).map(r => [r.id, r.name || r.id]);
      case "subnets-internal": {
        const ext = new Set(nets.filter(n => n["router:external"]).map(n => n.id));
        return (S.data.subnets || []).filter(s => !ext.has(s.network_id) && view(s))
          .map(s => [s.id, `${netName(s.network_id)}: ${s.cidr}${s.name ? " (" + s.name + ")" : ""}`]);
      }
      case "ports-vm": return (S.data.ports || []).filter(p => VM_OWNER.test(p.device_owner || "") && view(p))
        .map(p => [p.id, `${p.name || p.id.slice(0, 8)} ${(p.fixed_ips || []).map(f => f.ip_address).join(", ")}`]);
      case "security-groups": return (S.data["security-groups"] || []).filter(view).map(g => [g.id, g.name + (isAdmin() && !S.view ? ` (${projectName(g.project_id)})` : "")]);
      default: return [];
    }
  }

  function fillSelects() {
    for (const sel of document.querySelectorAll("select[data-options]")) {
      const keep = sel.value;
      const opts = optionsFor(sel.dataset.options);
      const all = (sel.dataset.empty !== undefined ? [["", sel.dataset.empty]] : []).concat(opts);
      if (!all.length) all.push(["", "(none available)"]);
      sel.replaceChildren(...all.map(([v, l]) => new Option(l, v)));
      if (all.some(([v]) => v === keep)) sel.value = keep;
    }
  }

  function ipVersion(cidr) { return cidr.includes(":") ? 6 : 4; }

  // The IPv6 mode select: one value sets both ipv6_ra_mode and ipv6_address_mode (the router
  // advertises the subnet), as the common case; "" leaves both unset (static addressing).
  function withV6Mode(sub, f) {
    const mode = f.ipv6_mode ? f.ipv6_mode.value : "";
    if (sub.ip_version === 6 && mode) { sub.ipv6_ra_mode = mode; sub.ipv6_address_mode = mode; }
    return sub;
  }

  function intOrNull(v) {
    if (v === "") return null;
    const n = Number(v);
    return Number.isInteger(n) ? n : v;   // let the API judge what is not an integer
  }

  const ACTIONS = {
    async network(f) {
      const name = f.name.value.trim();
      const cidr = f.cidr.value.trim();
      const body = { name };
      if (isAdmin() && S.view) body.project_id = S.view;
      const net = (await api("POST", "/v2.0/networks", { network: body })).json.network;
      if (cidr) {
        const sub = withV6Mode({ network_id: net.id, cidr, ip_version: ipVersion(cidr), name: `${name}-subnet`,
                                 enable_dhcp: f.enable_dhcp.checked }, f);
        if (f.gateway_ip.value.trim()) sub.gateway_ip = f.gateway_ip.value.trim();
        if (body.project_id) sub.project_id = body.project_id;
        try {
          await api("POST", "/v2.0/subnets", { subnet: sub });
        } catch (e) {
          await api("DELETE", `/v2.0/networks/${net.id}`).catch(() => null);  // all or nothing
          throw e;
        }
      }
      await afterWrite(["networks", "subnets"]);
      return `Network ${name} created.`;
    },
    async subnet(f) {
      const cidr = f.cidr.value.trim();
      const sub = withV6Mode({ network_id: f.network_id.value, cidr, ip_version: ipVersion(cidr),
                               enable_dhcp: f.enable_dhcp.checked }, f);
      if (f.name.value.trim()) sub.name = f.name.value.trim();
      await api("POST", "/v2.0/subnets", { subnet: sub });
      await afterWrite(["networks", "subnets"]);
      return `Subnet ${cidr} added.`;
    },
    async router(f) {
      const body = { name: f.name.value.trim() };
      if (f.external_network_id.value) body.external_gateway_info = { network_id: f.external_network_id.value };
      if (isAdmin() && S.view) body.project_id = S.view;
      await api("POST", "/v2.0/routers", { router: body });
      await afterWrite(["routers", "ports"]);
      return `Router ${body.name} created.`;
    },
    async interface(f) {
      await api("PUT", `/v2.0/routers/${f.router_id.value}/add_router_interface`, { subnet_id: f.subnet_id.value });
      await afterWrite(["routers", "ports"]);
      return "Interface added.";
    },
    async gateway(f) {
      const info = f.network_id.value ? { network_id: f.network_id.value } : {};
      await api("PUT", `/v2.0/routers/${f.router_id.value}`, { router: { external_gateway_info: info } });
      await afterWrite(["routers", "ports"]);
      return f.network_id.value ? "Gateway set." : "Gateway cleared.";
    },
    async fip(f) {
      const body = { floating_network_id: f.floating_network_id.value };
      if (f.port_id.value) body.port_id = f.port_id.value;
      if (isAdmin() && S.view) body.project_id = S.view;
      const fip = (await api("POST", "/v2.0/floatingips", { floatingip: body })).json.floatingip;
      await afterWrite(["floatingips"]);
      return `Floating IP ${fip.floating_ip_address} allocated.`;
    },
    async rule(f) {
      const body = { security_group_id: f.security_group_id.value, direction: f.direction.value, ethertype: f.ethertype.value };
      if (f.protocol.value) body.protocol = f.protocol.value;
      if (f.remote_ip_prefix.value.trim()) body.remote_ip_prefix = f.remote_ip_prefix.value.trim();
      const min = intOrNull(f.port_range_min.value.trim()), max = intOrNull(f.port_range_max.value.trim());
      if (min !== null) body.port_range_min = min;
      if (max !== null || min !== null) body.port_range_max = max !== null ? max : min;
      await api("POST", "/v2.0/security-group-rules", { security_group_rule: body });
      await afterWrite(["security-groups"]);
      return "Rule added.";
    },
  };

  function bindForms() {
    for (const form of document.querySelectorAll("form[data-action]")) {
      form.addEventListener("submit", async ev => {
        ev.preventDefault();
        const err = form.querySelector(".form-error");
        const btn = form.querySelector("button[type=submit]");
        err.textContent = "";
        btn.disabled = true;
        form.setAttribute("aria-busy", "true");
        try {
          const msg = await ACTIONS[form.dataset.action](form);
          for (const i of form.querySelectorAll("input:not([type=checkbox])")) i.value = "";
          setStatus(msg);
          clearBanner();
        } catch (e) {
          err.textContent = e.message;
          showBanner(e.message);
        } finally {
          btn.disabled = false;
          form.removeAttribute("aria-busy");
        }
      });
    }
  }

  function setStatus(msg) { $("#status").textContent = msg; }

  function showBanner(msg) {
    $("#banner-text").textContent = msg;
    $("#banner").hidden = false;
  }

  function clearBanner() { $("#banner").hidden = true; $("#banner-text").textContent = ""; }

  // --- boot --------------------------------------------------------------------------------------
  document.addEventListener("DOMContentLoaded", () => {
    bindForms();
    $("#banner-close").addEventListener("click", clearBanner);
    $("#logout").addEventListener("click", () => signOut(""));
    $("#project-select").addEventListener("change", ev => { S.view = ev.target.value; S.selected = null; draw(); });
    $("#login-form").addEventListener("submit", async ev => {
      ev.preventDefault();
      const btn = ev.target.querySelector("button");
      btn.disabled = true;
      $("#login-error").textContent = "";
      try {
        await signIn($("#login-user").value.trim(), $("#login-password").value, $("#login-project").value.trim());
        $("#login-password").value = "";
        await start();
      } catch (e) {
        $("#login-error").textContent = e.status === 401 ? "The user name or password is wrong." : e.message;
      } finally { btn.disabled = false; }
    });
    let resizeTimer = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(() => { if (S.auth) draw(); }, 100);
    });
    setInterval(() => { if (S.auth && isAdmin()) drawHosts(); }, 1000);
    const saved = sessionStorage.getItem("vxnet.auth");
    if (saved) {
      try { S.auth = JSON.parse(saved); } catch (e) { S.auth = null; }
      if (S.auth && Date.now() < S.auth.expiresAt) { start(); return; }
      S.auth = null;
    }
    $("#login-view").hidden = false;
  });
})();
