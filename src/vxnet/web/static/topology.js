/* vxnet topology drawing: a model of the visible objects in, an SVG out.
 *
 * Contract:
 * - `VxTopology.buildModel(data, opts)` is pure: REST collections in (networks, subnets, ports,
 *   routers, floatingips), the picture's model out: external networks, router groups (a router
 *   with the internal networks it is connected to), and networks no router reaches.
 *   opts.projectId: show only that project (null: all); opts.projectNames: id -> name, to label
 *   each network with its project (the admin's all-projects view).
 * - `VxTopology.layout(model, width)` is pure: positions for every box and line, fitted to the
 *   width (cards wrap into as many columns as fit; at least one).
 * - `VxTopology.render(container, layout, onSelect)` replaces the container's SVG. Every object
 *   is a focusable <g> with data-kind, data-id and data-name, activated by click, Enter or Space.
 *
 * Layout: each external network is a full-width bar at the top with its own vertical "spine" on
 * the left; a router hangs off the spine of its gateway network; a router's networks hang below
 * it on a bus (one drop per network, labelled with the router's address on that network).
 * Routers with a gateway come first (then by name). A network reached by several routers is
 * drawn once, under the first of them, and names the others.
 * No text from the API is ever parsed as HTML (SVG text nodes only).
 */
(function () {
  "use strict";
  const NS = "http://www.w3.org/2000/svg";
  const PAD = 12, GAP = 16, EXT_H = 46, RTR_H = 56, BUS_GAP = 26;
  const HEAD_H = 28, LINE_H = 18, PORT_H = 38;
  const VM_OWNER = /^compute:/;
  const ROUTER_IF = /^network:(router_interface|router_interface_distributed|ha_router_replicated_interface)$/;

  function hue(id) {
    let h = 0;
    for (let i = 0; i < id.length; i++) h = (h * 31 + id.charCodeAt(i)) >>> 0;
    return h % 360;
  }

  function byName(a, b) {
    return (a.name || a.id).localeCompare(b.name || b.id) || a.id.localeCompare(b.id);
  }

  function ips(port) {
    return (port.fixed_ips || []).map(f => f.ip_address);
  }

  // IPv6 addresses are long: a port shows them on a line of their own.
  const isV6 = ip => String(ip).includes(":");
  const V6_H = 14;
  const portHeight = p => PORT_H + (p.ips.some(isV6) ? V6_H : 0);

  // "slaac", "dhcpv6-stateful"...: the subnet's IPv6 address mode (RA mode if it differs)
  function v6Mode(s) {
    if (s.ip_version !== 6) return "";
    const a = s.ipv6_address_mode, r = s.ipv6_ra_mode;
    if (!a && !r) return "static";
    return a && r && a !== r ? `${a} (RA ${r})` : (a || `RA ${r}`);
  }

  /* The model of what to draw. `opts.projectId`: only this project's objects (external and
   * shared networks stay), or null for everything the caller can see. */
  function buildModel(data, opts) {
    const project = opts && opts.projectId;
    const mine = o => !project || o.project_id === project;
    const nets = (data.networks || []).slice().sort(byName);
    const subnets = data.subnets || [];
    const ports = data.ports || [];
    // Routers with a gateway first, so the external spines stay short and pass no other router.
    const hasGw = r => (r.external_gateway_info && r.external_gateway_info.network_id ? 0 : 1);
    const routersAll = (data.routers || []).filter(mine).slice().sort((a, b) => hasGw(a) - hasGw(b) || byName(a, b));
    const fips = (data.floatingips || []).filter(mine);
    const group = (list, key) => {
      const out = new Map();
      for (const o of list) { const k = o[key]; if (!out.has(k)) out.set(k, []); out.get(k).push(o); }
      return out;
    };
    const subnetsByNet = group(subnets, "network_id");
    const portsByNet = group(ports, "network_id");
    const portsByDevice = group(ports, "device_id");
    const subnetsOf = id => (subnetsByNet.get(id) || []).slice()
      .sort((a, b) => (a.cidr || "").localeCompare(b.cidr || ""));
    const fipByPort = {};
    for (const f of fips) if (f.port_id) (fipByPort[f.port_id] = fipByPort[f.port_id] || []).push(f.floating_ip_address);

    const externals = nets.filter(n => n["router:external"]).map(n => ({
      id: n.id, name: n.name || n.id.slice(0, 8), status: n.status,
      cidrs: subnetsOf(n.id).map(s => s.cidr),
      freeFips: fips.filter(f => f.floating_network_id === n.id && !f.port_id).map(f => f.floating_ip_address),
      fips: fips.filter(f => f.floating_network_id === n.id),
    }));

    const internal = nets.filter(n => !n["router:external"] && (mine(n) || n.shared));
    const networks = internal.map(n => ({
      id: n.id, name: n.name || n.id.slice(0, 8), status: n.status, shared: !!n.shared,
      vni: n["provider:segmentation_id"], projectId: n.project_id,
      project: opts && opts.projectNames ? (opts.projectNames[n.project_id] || n.project_id) : null,
      subnets: subnetsOf(n.id).map(s => ({ id: s.id, name: s.name, cidr: s.cidr, gateway: s.gateway_ip,
                                           mode: v6Mode(s) })),
      ports: (portsByNet.get(n.id) || []).filter(p => VM_OWNER.test(p.device_owner || "") && (mine(p) || mine(n)))
        .sort(byName).map(p => ({
          id: p.id, name: p.name || (p.device_id ? "vm " + p.device_id.slice(0, 8) : "port " + p.id.slice(0, 8)),
          status: p.status || "DOWN", ips: ips(p), host: p["binding:host_id"] || "",
          fips: fipByPort[p.id] || [], deviceId: p.device_id,
        })),
      links: [],
    }));
    const netById = Object.fromEntries(networks.map(n => [n.id, n]));

    const routers = routersAll.map(r => {
      const gw = r.external_gateway_info || null;
      const ifaces = (portsByDevice.get(r.id) || []).filter(p => ROUTER_IF.test(p.device_owner || ""))
        .map(p => ({ portId: p.id, networkId: p.network_id, ips: ips(p),
                     subnetIds: (p.fixed_ips || []).map(f => f.subnet_id) }));
      return {
        id: r.id, name: r.name || r.id.slice(0, 8), status: r.status || "ACTIVE",
        gateway: gw && gw.network_id ? { networkId: gw.network_id,
          ips: (gw.external_fixed_ips || []).map(f => f.ip_address) } : null,
        ifaces,
      };
    });

    // Each network under its first router (by name); other routers are named on the card.
    const placed = new Set();
    const groups = routers.map(r => {
      const members = [];
      for (const i of r.ifaces) {
        const n = netById[i.networkId];
        if (!n) continue;
        n.links.push({ routerId: r.id, routerName: r.name, ips: i.ips });
        if (!placed.has(n.id)) { placed.add(n.id); members.push({ network: n, ips: i.ips }); }
      }
      return { router: r, members };
    });
    const unrouted = networks.filter(n => !placed.has(n.id));
    return { externals, groups, unrouted, networks, routers };
  }

  function clip(text, px, charPx) {
    const max = Math.max(3, Math.floor(px / charPx));
    text = String(text);
    return text.length > max ? text.slice(0, max - 1) + "…" : text;
  }

  function cardHeight(n) {
    const extra = (n.links.length > 1 ? n.links.length - 1 : 0) + (n.project ? 1 : 0);
    return HEAD_H + 6 + (n.subnets.length || 1) * LINE_H + extra * LINE_H + 6
      + (n.ports.length ? n.ports.reduce((sum, p) => sum + portHeight(p), 0) : LINE_H) + 8;
  }

  /* Positions for everything, for a drawing `width` pixels wide. */
  function layout(model, width) {
    const W = Math.max(300, Math.floor(width));
    const items = [];   // {type: ext|router|network|label|line, ...}
    let y = PAD;
    const spineX = {};
    model.externals.forEach((e, i) => {
      spineX[e.id] = PAD + 10 + i * 12;
      items.push({ type: "ext", ext: e, x: PAD, y, w: W - 2 * PAD, h: EXT_H });
      y += EXT_H + 8;
    });
    const extBottom = {};
    model.externals.forEach((e, i) => { extBottom[e.id] = PAD + i * (EXT_H + 8) + EXT_H; });
    const rx = PAD + 10 + model.externals.length * 12 + 14;
    const cardsFrom = (x0, count) => {
      const avail = W - x0 - PAD;
      const cols = Math.max(1, Math.min(count, Math.floor((avail + GAP) / (220 + GAP))));
      const cw = Math.min(300, Math.floor((avail - (cols - 1) * GAP) / cols));
      return { cw, cols };
    };
    y += 10;

    for (const g of model.groups) {
      const r = g.router;
      const rw = Math.min(250, W - rx - PAD);
      items.push({ type: "router", router: r, x: rx, y, w: rw, h: RTR_H });
      if (r.gateway && spineX[r.gateway.networkId] !== undefined) {
        const sx = spineX[r.gateway.networkId];
        items.push({ type: "line", kind: "gateway", d: `M${sx},${extBottom[r.gateway.networkId]} L${sx},${y + RTR_H / 2} L${rx},${y + RTR_H / 2}`,
                     cls: "link gw", routerId: r.id });
      }
      y += RTR_H;
      if (g.members.length) {
        const trunkX = rx + 16;
        const x0 = rx + 34;
        const { cw, cols } = cardsFrom(x0, g.members.length);
        let row = 0;
        let lastBus = y;
        for (let i = 0; i < g.members.length; i += cols) {
          const rowMembers = g.members.slice(i, i + cols);
          const busY = y + BUS_GAP - 10;
          const top = y + BUS_GAP;
          let rowH = 0;
          let lastDrop = trunkX;
          rowMembers.forEach((m, j) => {
            const x = x0 + j * (cw + GAP);
            const h = cardHeight(m.network);
            rowH = Math.max(rowH, h);
            const dropX = x + 22;
            lastDrop = dropX;
            items.push({ type: "line", kind: "iface", d: `M${dropX},${busY} L${dropX},${top}`, cls: "link iface",
                         routerId: r.id, networkId: m.network.id, label: m.ips.join(", "), lx: dropX + 5, ly: busY + 9 });
            items.push({ type: "network", network: m.network, x, y: top, w: cw, h, router: r });
          });
          items.push({ type: "line", kind: "bus", d: `M${trunkX},${busY} L${lastDrop},${busY}`, cls: "link bus" });
          lastBus = busY;
          y = top + rowH;
          row++;
        }
        items.push({ type: "line", kind: "trunk", d: `M${trunkX},${items.find(it => it.type === "router" && it.router === r).y + RTR_H} L${trunkX},${lastBus}`, cls: "link bus" });
      }
      y += 18;
    }

    if (model.unrouted.length) {
      items.push({ type: "label", text: model.groups.length ? "Networks without a router" : "Networks", x: rx, y: y + 12 });
      y += 22;
      const { cw, cols } = cardsFrom(rx, model.unrouted.length);
      for (let i = 0; i < model.unrouted.length; i += cols) {
        let rowH = 0;
        model.unrouted.slice(i, i + cols).forEach((n, j) => {
          const h = cardHeight(n);
          rowH = Math.max(rowH, h);
          items.push({ type: "network", network: n, x: rx + j * (cw + GAP), y, w: cw, h, router: null });
        });
        y += rowH + GAP;
      }
    }
    if (!model.groups.length && !model.unrouted.length) {
      items.push({ type: "label", text: "No networks yet: create one with the form.", x: rx, y: y + 12 });
      y += 24;
    }
    return { width: W, height: y + PAD, items };
  }

  function el(name, attrs, parent) {
    const e = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs || {})) if (v !== undefined && v !== null) e.setAttribute(k, String(v));
    if (parent) parent.appendChild(e);
    return e;
  }

  function text(parent, x, y, str, cls, attrs) {
    const t = el("text", Object.assign({ x, y, class: cls }, attrs || {}), parent);
    t.textContent = str;
    return t;
  }

  function node(svg, kind, obj, label) {
    const g = el("g", { class: "node " + kind, tabindex: 0, role: "button", "data-kind": kind,
                         "data-id": obj.id, "data-name": obj.name, "aria-label": label }, svg);
    el("title", {}, g).textContent = label;
    return g;
  }

  function statusClass(s) {
    s = (s || "").toUpperCase();
    if (s === "ACTIVE" || s === "UP") return "ok";
    if (s === "ERROR") return "bad";
    return "warn";
  }

  /* Draw `lay` into `container` (replacing what was there). */
  function render(container, lay, onSelect, selected) {
    const svg = el("svg", { width: lay.width, height: lay.height, viewBox: `0 0 ${lay.width} ${lay.height}`,
                            role: "group", "aria-label": "Network topology", class: "topology" });
    // One listener for every object (the innermost focusable one wins: a port inside its network).
    const target = ev => ev.target.closest && ev.target.closest("[data-kind][data-id][tabindex]");
    svg.addEventListener("click", ev => {
      const t = target(ev);
      if (t) onSelect(t.dataset.kind, t.dataset.id);
    });
    svg.addEventListener("keydown", ev => {
      const t = target(ev);
      if (t && (ev.key === "Enter" || ev.key === " ")) { ev.preventDefault(); onSelect(t.dataset.kind, t.dataset.id); }
    });
    const lines = el("g", { class: "lines" }, svg);
    for (const it of lay.items) {
      if (it.type === "line") {
        el("path", { d: it.d, class: it.cls, "data-link": it.kind, "data-router": it.routerId,
                     "data-network": it.networkId }, lines);
        if (it.label) text(lines, it.lx, it.ly, it.label, "link-label");
      } else if (it.type === "label") {
        text(svg, it.x, it.y, it.text, "section-label");
      }
    }
    for (const it of lay.items) {
      if (it.type === "ext") {
        const e = it.ext;
        const g = node(svg, "external", e, `External network ${e.name} ${e.cidrs.join(" ")}`);
        el("rect", { x: it.x, y: it.y, width: it.w, height: it.h, rx: 6, class: "ext-bar" }, g);
        text(g, it.x + 10, it.y + 18, clip(`${e.name}  ·  external`, it.w - 20, 7.4), "ext-name");
        const fipText = e.fips.length ? `floating IPs: ${e.fips.map(f => f.floating_ip_address + (f.port_id ? "" : " (free)")).join(", ")}` : "no floating IPs";
        text(g, it.x + 10, it.y + 36, clip(`${e.cidrs.join(", ") || "no subnet visible"}  ·  ${fipText}`, it.w - 20, 6.6), "ext-sub");
      } else if (it.type === "router") {
        const r = it.router;
        const g = node(svg, "router", r, `Router ${r.name}, ${r.status}` + (r.gateway ? `, gateway ${r.gateway.ips.join(" ")}` : ", no gateway"));
        el("rect", { x: it.x, y: it.y, width: it.w, height: it.h, rx: 10, class: "router-box" + (selected === r.id ? " selected" : "") }, g);
        el("circle", { cx: it.x + 20, cy: it.y + 20, r: 9, class: "router-icon" }, g);
        el("path", { d: `M${it.x + 14},${it.y + 20} h12 M${it.x + 20},${it.y + 14} v12`, class: "router-cross" }, g);
        text(g, it.x + 36, it.y + 24, clip(r.name, it.w - 46, 7.6), "router-name");
        const gw = r.gateway ? `gw ${r.gateway.ips.join(", ") || "(pending)"}` : "no gateway";
        text(g, it.x + 12, it.y + 45, clip(`${r.status.toLowerCase()} · ${gw}`, it.w - 22, 6.6), "router-sub");
      } else if (it.type === "network") {
        drawNetwork(svg, it, selected);
      }
    }
    container.replaceChildren(svg);
  }

  function drawNetwork(svg, it, selected) {
    const n = it.network;
    const h = hue(n.id);
    const label = `Network ${n.name}, subnets ${n.subnets.map(s => s.cidr).join(" ") || "none"}, ${n.ports.length} ports`;
    const g = node(svg, "network", n, label);
    el("rect", { x: it.x, y: it.y, width: it.w, height: it.h, rx: 8, class: "net-card" + (selected === n.id ? " selected" : "") }, g);
    el("rect", { x: it.x, y: it.y, width: it.w, height: HEAD_H, rx: 8, fill: `hsl(${h} 55% 29%)`, class: "net-head" }, g);
    el("rect", { x: it.x, y: it.y + HEAD_H - 8, width: it.w, height: 8, fill: `hsl(${h} 55% 29%)` }, g);
    const right = (n.vni != null ? `VNI ${n.vni}` : "") + (n.shared ? " shared" : "");
    text(g, it.x + 10, it.y + 19, clip(n.name, it.w - 20 - right.length * 7, 7.6), "net-name");
    if (right) text(g, it.x + it.w - 10, it.y + 19, right.trim(), "net-vni", { "text-anchor": "end" });
    let y = it.y + HEAD_H + 6;
    if (!n.subnets.length) { text(g, it.x + 10, y + 13, "no subnet", "muted-t"); y += LINE_H; }
    for (const s of n.subnets) {
      const sg = el("g", { class: "subnet", "data-kind": "subnet", "data-id": s.id, "data-cidr": s.cidr }, g);
      text(sg, it.x + 10, y + 13, clip(`${s.cidr}${s.mode ? "  " + s.mode : ""}${s.gateway ? "  gw " + s.gateway : ""}${s.name ? "  · " + s.name : ""}`, it.w - 20, 6.7), "subnet-t");
      y += LINE_H;
    }
    if (n.project) {
      text(g, it.x + 10, y + 13, clip(`project ${n.project}`, it.w - 20, 6.7), "muted-t project-t");
      y += LINE_H;
    }
    for (const l of n.links.slice(1)) {
      text(g, it.x + 10, y + 13, clip(`also via ${l.routerName} ${l.ips.join(", ")}`, it.w - 20, 6.7), "muted-t");
      y += LINE_H;
    }
    el("line", { x1: it.x + 8, x2: it.x + it.w - 8, y1: y + 3, y2: y + 3, class: "sep" }, g);
    y += 6;
    if (!n.ports.length) { text(g, it.x + 10, y + 13, "no VM ports", "muted-t"); }
    for (const p of n.ports) {
      const pg = el("g", { class: "port", tabindex: 0, role: "button", "data-kind": "port", "data-id": p.id, "data-name": p.name,
                           "aria-label": `Port ${p.name} ${p.ips.join(" ")} ${p.status}${p.host ? " on " + p.host : ""}` }, g);
      const ph = portHeight(p);
      el("rect", { x: it.x + 6, y: y + 1, width: it.w - 12, height: ph - 4, rx: 5, class: "port-box" + (selected === p.id ? " selected" : "") }, pg);
      el("circle", { cx: it.x + 16, cy: y + 12, r: 4.5, class: "dot " + statusClass(p.status) }, pg);
      text(pg, it.x + 26, y + 16, clip(p.name, it.w - 100, 7.2), "port-name");
      text(pg, it.x + it.w - 12, y + 16, p.status, "port-status " + statusClass(p.status), { "text-anchor": "end" });
      const bits = [p.ips.filter(ip => !isV6(ip)).join(", ")];
      if (p.fips.length) bits.push("⇄ " + p.fips.join(", "));
      if (p.host) bits.push("@ " + p.host);
      text(pg, it.x + 26, y + 30, clip(bits.filter(Boolean).join("  "), it.w - 40, 6.5), "port-sub");
      const v6 = p.ips.filter(isV6);
      if (v6.length) text(pg, it.x + 26, y + 30 + V6_H, clip(v6.join(", "), it.w - 40, 6.5), "port-sub port-v6");
      y += ph;
    }
  }

  window.VxTopology = { buildModel, layout, render };
})();
