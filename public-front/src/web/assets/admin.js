// The operator dashboard: polls GET /admin/api/overview and
// GET /admin/api/carts every 2 s with the admin bearer token (kept in
// sessionStorage, so it dies with the tab) and draws nodes, order counts,
// carts and the stock held for them, message counters, backlogs, stock,
// recent orders with their message timelines, and a chart of orders per
// second computed from successive polls.
"use strict";

(() => {
  const { h, money } = Web;
  const $ = (id) => document.getElementById(id);

  const TOKEN_KEY = "webshop.admin.token";
  const POLL_MS = 2000;
  const LOW_STOCK = 5;
  const CHART_POINTS = 90; // three minutes at one sample per 2 s
  const STATUSES = ["pending", "confirmed", "rejected", "cancelled"];
  const COUNTERS = ["received", "applied", "deduplicated", "parked", "unparked", "dead_lettered", "ignored"];

  let token = sessionStorage.getItem(TOKEN_KEY);
  let timer = null;
  let polling = false;
  let overview = null;
  /** The last GET /admin/api/carts, with `skew`: the front's clock minus ours (ms). */
  let carts = null;
  let lastOk = null;
  /** [{t: ms, total}] from successive polls, and the rates between them. */
  let samples = [];
  let rates = [];
  /** Orders whose timeline is open, and their timelines. */
  const expanded = new Set();
  const timelines = new Map();

  // ---- API ----

  async function admin(path) {
    return Web.json(path, { headers: { Authorization: `Bearer ${token}`, Accept: "application/json" } });
  }

  function authProblem(e) {
    if (e.status === 401) return "That token was not accepted. Check the front's admin_token.";
    if (e.status === 403 && e.code === "admin_disabled") {
      return "The admin API is disabled on this front: set admin_token in its config (or WEBSHOP_FRONT__ADMIN_TOKEN) and restart it.";
    }
    if (e.status === 404) return "This front has no dashboard API (GET /admin/api/overview answered 404). Is it up to date?";
    return null;
  }

  // ---- Sign in and out ----

  function showLogin(message) {
    stop();
    $("dash").hidden = true;
    $("signout").hidden = true;
    $("updated").textContent = "";
    $("login").hidden = false;
    const msg = $("login-msg");
    msg.className = message ? "notice error" : "notice";
    msg.textContent = message || "";
    $("token").focus();
  }

  async function signIn(ev) {
    ev.preventDefault();
    token = $("token").value.trim();
    if (!token) return;
    $("login-button").disabled = true;
    try {
      const [first, c] = await Promise.all([admin("/admin/api/overview"), readCarts()]);
      sessionStorage.setItem(TOKEN_KEY, token);
      $("token").value = "";
      showDash();
      acceptCarts(c);
      accept(first);
    } catch (e) {
      const auth = authProblem(e);
      if (auth) sessionStorage.removeItem(TOKEN_KEY);
      $("login-msg").className = "notice error";
      $("login-msg").textContent = auth || `Couldn't load the dashboard: ${e.detail}`;
    } finally {
      $("login-button").disabled = false;
    }
  }

  function signOut() {
    sessionStorage.removeItem(TOKEN_KEY);
    token = null;
    samples = [];
    rates = [];
    carts = null;
    expanded.clear();
    timelines.clear();
    showLogin(null);
  }

  function showDash() {
    $("login").hidden = true;
    $("dash").hidden = false;
    $("signout").hidden = false;
    schedule(POLL_MS);
  }

  // ---- Polling ----

  function stop() {
    clearTimeout(timer);
    timer = null;
  }

  function schedule(ms) {
    stop();
    timer = setTimeout(poll, ms);
  }

  async function poll() {
    if (polling || !token) return;
    polling = true;
    const started = Date.now();
    try {
      const [o, c] = await Promise.all([admin("/admin/api/overview"), readCarts()]);
      acceptCarts(c);
      accept(o);
      $("dash-msg").className = "notice";
      $("dash-msg").textContent = "";
      refreshTimelines();
    } catch (e) {
      const auth = authProblem(e);
      if (auth && e.status !== 404) {
        sessionStorage.removeItem(TOKEN_KEY);
        polling = false;
        showLogin(auth);
        return;
      }
      $("dash-msg").className = "notice error";
      $("dash-msg").textContent = `Couldn't refresh: ${e.detail}${lastOk ? ` The figures below are from ${new Date(lastOk).toLocaleTimeString()}.` : ""}`;
    } finally {
      polling = false;
    }
    // A hidden tab stops polling; it resumes when shown.
    if (token && !document.hidden) schedule(Math.max(0, POLL_MS - (Date.now() - started)));
  }

  /** The carts part; its failure only blanks the cart cards (the overview says why nodes are down). */
  async function readCarts() {
    try {
      return await admin("/admin/api/carts");
    } catch (e) {
      if (e.status === 401) throw e;
      return { error: e.status === 404 ? "This front has no carts API (GET /admin/api/carts answered 404)." : e.detail };
    }
  }

  function acceptCarts(c) {
    carts = c || {};
    if (Number.isFinite(carts.now_ms)) carts.skew = carts.now_ms - Date.now();
  }

  function accept(o) {
    overview = o || {};
    lastOk = Date.now();
    const counts = overview.orders || {};
    const total = STATUSES.reduce((sum, s) => sum + (Number(counts[s]) || 0), 0);
    const prev = samples[samples.length - 1];
    samples.push({ t: lastOk, total });
    if (prev && lastOk > prev.t) {
      rates.push({ t: lastOk, rate: Math.max(0, (total - prev.total) / ((lastOk - prev.t) / 1000)) });
    }
    samples = samples.slice(-2);
    rates = rates.slice(-CHART_POINTS);
    $("updated").textContent = `Updated ${new Date(lastOk).toLocaleTimeString()}`;
    render();
  }

  // ---- Rendering ----

  function render() {
    renderNodes(overview.nodes || []);
    renderOrders(overview.orders || {});
    renderCarts();
    renderChart();
    renderRecent();
    renderMessages();
    renderBacklog();
    renderStock(overview.stock || []);
  }

  function renderNodes(nodes) {
    const down = nodes.filter((n) => !n.ready).length;
    $("nodes-summary").replaceChildren(
      h("span", { class: `badge ${down ? "down" : "ready"}`, text: down ? `${down} not ready` : "all ready" }),
    );
    $("nodes").replaceChildren(
      ...nodes.map((n) =>
        h("li", { dataset: { node: n.name } },
          h("strong", { text: n.name }),
          h("span", { class: `badge ${n.ready ? "ready" : "down"}`, text: n.ready ? "ready" : "not ready" }),
          n.url ? h("span", { class: "url mono", text: n.url }) : null,
          !n.ready && n.reason ? h("span", { class: "reason", text: n.reason }) : null),
      ),
    );
  }

  function renderOrders(counts) {
    const total = STATUSES.reduce((sum, s) => sum + (Number(counts[s]) || 0), 0);
    $("orders-total").textContent = `${total} in all`;
    const tiles = STATUSES.map((s) => tile(s, counts[s] || 0, s));
    tiles.push(tile("release pending", counts.release_pending || 0, counts.release_pending ? "pending" : ""));
    $("order-tiles").replaceChildren(...tiles);
  }

  function tile(label, n, cls) {
    return h("div", { class: `tile ${cls}`, dataset: { key: label } },
      h("div", { class: "n", text: n }),
      h("div", { class: "k", text: label }));
  }

  // ---- Carts and held stock ----

  /** "in 42 s" until `atMs` on the front's clock; "now" once past. */
  function until(atMs) {
    const left = atMs - (Date.now() + ((carts && carts.skew) || 0));
    return left <= 0 ? "now" : `in ${Web.ago(left)}`;
  }

  function renderCarts() {
    const c = carts || {};
    $("carts-note").textContent = c.error
      ? `Couldn't read carts: ${c.error}`
      : (c.holds_partial ? "Held figures count the first 10,000 holds only." : "");
    const counts = c.counts || {};
    const held = Array.isArray(c.held) ? c.held : [];
    const unknown = (v) => (v === null || v === undefined ? "–" : v);
    $("cart-tiles").replaceChildren(
      tile("open", unknown(c.counts ? counts.open : null), "pending"),
      tile("checked out", unknown(c.counts ? counts.checked_out : null), "confirmed"),
      tile("units held", c.held ? held.reduce((sum, r) => sum + r.held, 0) : "–", ""),
    );

    const expiring = Array.isArray(c.expiring) ? c.expiring : [];
    $("expiring").replaceChildren(
      ...expiring.map((x) =>
        h("li", { dataset: { cartId: x.cart_id, sku: x.sku } },
          h("span", { class: "mono", text: x.sku }), ` × ${x.quantity} `,
          h("span", { class: "muted small" }, "cart ", h("span", { class: "mono", title: x.cart_id, text: x.cart_id.slice(0, 8) })),
          h("span", { class: "when", title: new Date(x.expires_at_ms).toLocaleString(), text: until(x.expires_at_ms) }))),
    );
    if (expiring.length === 0) $("expiring").append(h("li", { class: "muted", text: c.expiring ? "No stock is held." : "–" }));

    $("held").replaceChildren(
      ...held.map((r) =>
        h("tr", { dataset: { sku: r.sku } },
          h("td", { class: "mono", text: r.sku }),
          h("td", { class: "num held", text: r.held }),
          h("td", { class: "num", text: r.carts }),
          h("td", { class: "num", title: new Date(r.next_expiry_ms).toLocaleString(), text: until(r.next_expiry_ms) }))),
    );
    if (held.length === 0) {
      $("held").append(h("tr", {}, h("td", { colspan: 4, class: "muted", text: c.held ? "No stock is held for carts." : "Inventory's holds can't be read right now." })));
    }

    const recent = Array.isArray(c.recent) ? c.recent : [];
    $("carts").replaceChildren(
      ...recent.map((cart) => {
        const lines = Array.isArray(cart.lines) ? cart.lines : [];
        const updated = cart.updated_at_ms ? Date.now() + ((c.skew) || 0) - cart.updated_at_ms : null;
        return h("tr", { class: "cart-row", dataset: { cartId: cart.cart_id } },
          h("td", { class: "mono", title: cart.cart_id, text: cart.cart_id.slice(0, 8) }),
          h("td", {},
            lines.length === 0 ? h("span", { class: "muted", text: "empty" }) : null,
            ...lines.map((l) =>
              h("div", { class: "cart-line-row", dataset: { sku: l.sku } },
                `${l.quantity} × `, h("span", { class: "mono", text: l.sku }),
                h("span", { class: `muted small${l.held < l.quantity ? " bad-text" : ""}`, text: ` (${l.held} held)` })))),
          h("td", {}, holdsState(cart)),
          h("td", { class: "num muted", text: updated === null ? "–" : `${Web.ago(updated)} ago` }));
      }),
    );
    if (recent.length === 0) {
      $("carts").append(h("tr", {}, h("td", { colspan: 4, class: "muted", text: c.recent ? "No open carts." : "–" })));
    }
  }

  function holdsState(cart) {
    const lines = Array.isArray(cart.lines) ? cart.lines : [];
    if (lines.length === 0) return h("span", { class: "muted", text: "–" });
    if (cart.holds_version < cart.version) return h("span", { class: "badge pending", text: "pending" });
    if (cart.holds_expired) return h("span", { class: "badge low", text: "expired" });
    if (cart.holds_expire_at_ms) {
      return h("span", { title: new Date(cart.holds_expire_at_ms).toLocaleString() },
        h("span", { class: "badge confirmed", text: "held" }), ` ends ${until(cart.holds_expire_at_ms)}`);
    }
    return h("span", { class: "badge rejected", text: "none held" });
  }

  const SVG = "http://www.w3.org/2000/svg";
  function s(tag, attrs, ...children) {
    const el = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "text") el.textContent = v;
      else el.setAttribute(k, String(v));
    }
    el.append(...children);
    return el;
  }

  function niceMax(v) {
    if (v <= 1) return 1;
    const p = 10 ** Math.floor(Math.log10(v));
    return [1, 2, 5, 10].map((m) => m * p).find((m) => m >= v);
  }

  function renderChart() {
    const svg = $("chart");
    const width = Math.max(280, Math.round(svg.getBoundingClientRect().width) || 600);
    const height = 180;
    const left = 36;
    const bottom = 20;
    const plotW = width - left - 8;
    const plotH = height - bottom - 8;
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    const now = rates.length ? rates[rates.length - 1].rate : null;
    $("rate").textContent = now === null ? "–" : now.toFixed(now < 10 ? 1 : 0);
    const max = niceMax(Math.max(0, ...rates.map((r) => r.rate)));
    const y = (v) => 8 + plotH - (v / max) * plotH;
    const x = (i) => left + (CHART_POINTS <= 1 ? 0 : (i / (CHART_POINTS - 1)) * plotW);
    const grid = s("g", { class: "grid" });
    const axis = s("g", { class: "axis" });
    for (const v of [0, max / 2, max]) {
      grid.append(s("line", { x1: left, x2: width - 8, y1: y(v), y2: y(v) }));
      axis.append(s("text", { x: left - 6, y: y(v) + 4, "text-anchor": "end", text: Number.isInteger(v) ? v : v.toFixed(1) }));
    }
    axis.append(s("text", { x: left, y: height - 4, text: `${Math.round((CHART_POINTS * POLL_MS) / 60000)} min ago` }));
    axis.append(s("text", { x: width - 8, y: height - 4, "text-anchor": "end", text: "now" }));
    const children = [grid, axis];
    if (rates.length > 0) {
      // The newest sample sits at the right edge.
      const offset = CHART_POINTS - rates.length;
      const pts = rates.map((r, i) => `${x(offset + i).toFixed(1)},${y(r.rate).toFixed(1)}`);
      if (rates.length === 1) pts.unshift(`${x(offset - 1).toFixed(1)},${y(rates[0].rate).toFixed(1)}`);
      const first = pts[0].split(",")[0];
      const last = pts[pts.length - 1].split(",")[0];
      children.push(s("polygon", { class: "area", points: `${first},${y(0)} ${pts.join(" ")} ${last},${y(0)}` }));
      children.push(s("polyline", { class: "line", points: pts.join(" ") }));
    }
    svg.replaceChildren(...children);
  }

  /** A table with one column per node: rows are `keys`, cells `value(node, key)`. */
  function perNodeTable(table, nodes, rows) {
    table.replaceChildren(
      h("thead", {}, h("tr", {}, h("th", {}), ...nodes.map((n) => h("th", { class: "num", text: n })))),
      h("tbody", {},
        ...rows.map(([label, value, warn]) =>
          h("tr", {},
            h("td", { text: label }),
            ...nodes.map((n) => {
              const v = value(n);
              return h("td", { class: `num${warn && warn(n) ? " bad-text" : ""}`, text: v === null || v === undefined ? "–" : v });
            }))),
      ),
    );
  }

  function renderMessages() {
    const m = overview.messages || {};
    const nodes = Object.keys(m);
    perNodeTable($("messages"), nodes,
      COUNTERS.map((c) => [c.replace("_", " "), (n) => (m[n] || {})[c], c === "dead_lettered" ? (n) => (m[n] || {})[c] > 0 : null]));
  }

  function renderBacklog() {
    const outbox = overview.outbox || {};
    const parked = overview.parked || {};
    const dead = overview.dead_letters || {};
    const nodes = [...new Set([...Object.keys(outbox), ...Object.keys(parked), ...Object.keys(dead)])];
    perNodeTable($("backlog"), nodes, [
      ["outbox unsent", (n) => (outbox[n] || {}).unsent, (n) => (outbox[n] || {}).unsent > 0],
      ["oldest unsent", (n) => {
        const age = (outbox[n] || {}).oldest_unsent_age_ms;
        return age === null || age === undefined ? "–" : Web.ago(age);
      }, null],
      ["parked now", (n) => parked[n], (n) => parked[n] > 0],
      ["dead letters", (n) => dead[n], (n) => dead[n] > 0],
    ]);
  }

  function renderStock(stock) {
    const low = stock.filter((r) => r.available <= LOW_STOCK);
    $("low-count").textContent = String(low.length);
    // Low stock first (fewest left on top), then the rest by SKU.
    const rest = stock.filter((r) => r.available > LOW_STOCK);
    low.sort((a, b) => a.available - b.available || a.sku.localeCompare(b.sku));
    const rows = $("low-only").checked ? low : [...low, ...rest];
    $("stock").replaceChildren(
      ...rows.map((r) => {
        const isLow = r.available <= LOW_STOCK;
        return h("tr", { class: isLow ? "low" : "", dataset: { sku: r.sku } },
          h("td", { class: "mono", text: r.sku }),
          h("td", { class: "num", text: r.available }),
          h("td", { class: "num", text: r.reserved }),
          h("td", { class: "num", text: r.held === undefined ? "–" : r.held }),
          h("td", { class: "num hide-phone", text: r.initial }),
          h("td", { class: "num hide-phone", text: r.restocked }),
          h("td", {}, isLow ? h("span", { class: "badge low", text: r.available <= 0 ? "out" : "low" }) : null));
      }),
    );
  }

  function renderRecent() {
    const orders = overview.recent_orders || [];
    const rows = [];
    for (const o of orders) {
      const open = expanded.has(o.order_id);
      const updated = o.updated_at_ms ? Date.now() - o.updated_at_ms : null;
      rows.push(
        h("tr", {
          class: "order-row", tabindex: 0, "aria-expanded": String(open), dataset: { orderId: o.order_id },
          onclick: () => toggle(o.order_id),
          onkeydown: (ev) => {
            if (ev.key === "Enter" || ev.key === " ") {
              ev.preventDefault();
              toggle(o.order_id);
            }
          },
        },
        h("td", { class: "mono", title: o.order_id, text: o.order_id.slice(0, 8) }),
        h("td", {}, h("span", { class: `badge ${o.status}`, text: o.status })),
        h("td", { class: "num", text: o.total_cents === undefined ? "–" : money(o.total_cents, o.currency) }),
        h("td", { class: "hide-phone muted", text: o.reason || "" }),
        h("td", { class: "num muted", text: updated === null ? "–" : `${Web.ago(updated)} ago` })),
      );
      if (open) rows.push(h("tr", { class: "timeline-row", dataset: { orderId: o.order_id } }, h("td", { colspan: 5 }, timelineView(o.order_id))));
    }
    if (orders.length === 0) rows.push(h("tr", {}, h("td", { colspan: 5, class: "muted", text: "No orders yet." })));
    $("recent").replaceChildren(...rows);
  }

  function timelineView(orderId) {
    const t = timelines.get(orderId);
    const head = h("div", { class: "small muted" }, "Order ", h("code", { text: orderId }));
    if (!t) return h("div", {}, head, h("p", { class: "muted small", text: "Loading messages…" }));
    if (t.error) return h("div", {}, head, h("p", { class: "notice error", text: `Couldn't load the timeline: ${t.error}` }));
    if (t.events.length === 0) return h("div", {}, head, h("p", { class: "muted small", text: "No messages recorded for this order." }));
    const start = Math.min(...t.events.map((e) => e.at_ms));
    return h("div", {}, head,
      h("ol", { class: "timeline" },
        ...t.events.map((e) =>
          h("li", { dataset: { event: e.event, node: e.node } },
            h("span", { class: "mono muted", title: new Date(e.at_ms).toISOString(), text: `+${e.at_ms - start} ms ` }),
            h("strong", { text: e.node }), " ",
            h("span", { class: `ev ${e.event}`, text: e.event }), " ",
            h("span", { class: "mono", text: e.topic || "" }), " ",
            h("span", { class: "mono muted small", title: e.message_id || "", text: e.message_id ? `…${e.message_id.slice(-8)}` : "" })))));
  }

  async function loadTimeline(orderId) {
    try {
      const events = await admin(`/admin/api/orders/${encodeURIComponent(orderId)}/timeline`);
      timelines.set(orderId, { events: Array.isArray(events) ? events.slice().sort((a, b) => a.at_ms - b.at_ms) : [] });
    } catch (e) {
      if (e.status === 401) return;
      timelines.set(orderId, { events: [], error: e.detail });
    }
    if (expanded.has(orderId) && overview) renderRecent();
  }

  function toggle(orderId) {
    if (expanded.has(orderId)) expanded.delete(orderId);
    else {
      expanded.add(orderId);
      loadTimeline(orderId);
    }
    renderRecent();
  }

  function refreshTimelines() {
    for (const id of expanded) loadTimeline(id);
  }

  // ---- Start ----

  document.addEventListener("DOMContentLoaded", () => {
    $("login").addEventListener("submit", signIn);
    $("signout").addEventListener("click", signOut);
    $("low-only").addEventListener("change", () => overview && renderStock(overview.stock || []));
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && token && !$("dash").hidden) schedule(0);
    });
    let resize;
    window.addEventListener("resize", () => {
      clearTimeout(resize);
      resize = setTimeout(() => overview && renderChart(), 150);
    });
    if (token) {
      showDash();
      schedule(0);
    } else {
      showLogin(null);
    }
  });
})();
