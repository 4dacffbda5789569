// The order page: the order's items and its status, live. Status comes
// from Server-Sent Events (/api/orders/{id}/events): one connection, and
// the front pushes each change. If those fail, the page long-polls
// GET /api/orders/{id}?wait=25s&version=N instead: the front answers as
// soon as the order changes, so a waiting page costs one request per
// change (or per 25 s), not one per second.
"use strict";

(() => {
  const { h, money } = Web;
  const $ = (id) => document.getElementById(id);

  const LONG_POLL_S = 25;
  // `/orders/{id}?poll`: long polls only, no event stream (for networks
  // whose proxies hold event streams back).
  const LONG_POLL_ONLY = new URLSearchParams(location.search).has("poll");
  // After a failed long poll, before the next.
  const RETRY_MS = 1000;
  // A dropped stream usually reconnects within this; poll only after it.
  const RECONNECT_GRACE_MS = 2000;
  const FINAL = new Set(["rejected", "cancelled"]);
  const CANCELLABLE = new Set(["pending", "confirmed"]);

  const orderId = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop() || "");
  const api = `/api/orders/${encodeURIComponent(orderId)}`;

  /** The newest status shown: {status, version, reason}. */
  let current = null;
  let events = null;
  let polling = false;
  // Each long-poll loop's number: a loop whose number is not the latest
  // stops (its request may outlive a stop and a restart).
  let pollRun = 0;
  let graceTimer = null;
  let refreshing = false;

  function setLive(mode, text) {
    const el = $("live");
    el.dataset.mode = mode;
    el.textContent = text;
  }

  const STEPS = {
    pending: [["Placed", "done"], ["Reserving stock", "current"], ["Confirmed", ""]],
    confirmed: [["Placed", "done"], ["Stock reserved", "done"], ["Confirmed", "done"]],
    rejected: [["Placed", "done"], ["Not enough stock", "bad"], ["Rejected", "bad"]],
    cancelled: [["Placed", "done"], ["Stock released", "done"], ["Cancelled", "bad"]],
  };

  function renderStatus() {
    const { status, reason } = current;
    const badge = $("status");
    badge.className = `badge large ${status}`;
    badge.textContent = status;
    badge.dataset.status = status;
    document.title = `Order ${status} · Webshop`;
    $("steps").replaceChildren(...(STEPS[status] || []).map(([label, cls]) => h("li", { class: cls, text: label })));
    $("status-text").textContent = Web.STATUS_TEXT[status] || "";
    const why = $("reason");
    why.hidden = !(status === "rejected" && reason);
    why.textContent = reason ? `Why: ${reason}` : "";
    $("cancel").hidden = !CANCELLABLE.has(status);
    $("status-card").hidden = false;
  }

  function renderDetails(order) {
    $("items").replaceChildren(
      ...order.items.map((l) =>
        h("tr", {},
          h("td", {}, h("div", { class: "product-name", dataset: { sku: l.sku } }), h("span", { class: "mono muted small sku", text: l.sku })),
          h("td", { class: "num", text: l.quantity }),
          h("td", { class: "num", text: money(l.unit_price_cents, order.currency) }),
          h("td", { class: "num", text: money(l.unit_price_cents * l.quantity, order.currency) })),
      ),
    );
    nameLines(order.items);
    $("total").textContent = money(order.total_cents, order.currency);
    $("created").textContent = Web.dateTime(order.created_at);
    $("updated").textContent = Web.dateTime(order.updated_at);
    $("details").hidden = false;
  }

  /** Product names, looked up once per SKU (orders hold SKUs only). */
  const names = new Map();
  async function nameLines(items) {
    const skus = [...new Set(items.map((l) => l.sku))].slice(0, 20);
    await Promise.all(
      skus.map(async (sku) => {
        if (!names.has(sku)) {
          try {
            names.set(sku, (await Web.json(`/api/catalog/${encodeURIComponent(sku)}`)).name);
          } catch (_) {
            return; // The SKU alone still identifies the line.
          }
        }
        for (const el of document.querySelectorAll("#items .product-name")) {
          if (el.dataset.sku === sku) el.textContent = names.get(sku);
        }
      }),
    );
  }

  /** Shows `s` if it is newer than what is shown; statuses only move forward. */
  function apply(s) {
    if (!s || typeof s.status !== "string") return;
    if (current && s.version < current.version) return;
    const changed = !current || s.status !== current.status;
    current = { status: s.status, version: s.version, reason: s.reason || null };
    renderStatus();
    if (FINAL.has(s.status)) {
      stopLive();
      setLive("done", "Final status");
    }
    // The status changed under the page: refresh the times shown.
    if (changed && s.items === undefined) refresh();
  }

  /** Reads the whole order (the reason and times come with it). */
  async function refresh() {
    if (refreshing) return;
    refreshing = true;
    try {
      const order = await Web.json(api);
      renderDetails(order);
      apply(order);
    } catch (_) {
      // The live status is still shown; the next change retries.
    } finally {
      refreshing = false;
    }
  }

  // ---- Live status ----

  function stopLive() {
    if (events) events.close();
    events = null;
    stopPolling();
  }

  /** Long polls until the status is final or polling stops. */
  async function longPoll(run) {
    const mine = () => polling && run === pollRun;
    while (mine() && !(current && FINAL.has(current.status))) {
      try {
        const url = current ? `${api}?wait=${LONG_POLL_S}s&version=${current.version}` : api;
        const order = await Web.json(url);
        if (!mine()) return;
        if (!current || order.version > current.version) renderDetails(order);
        apply(order);
        if (!events && current && !FINAL.has(current.status)) setLive("polling", "Updating as it changes");
      } catch (e) {
        if (e.status === 404) {
          stopLive();
          $("load-msg").className = "notice error";
          $("load-msg").textContent = e.detail;
          return;
        }
        if (!mine()) return;
        setLive("polling", "Reconnecting…");
        await Web.sleep(RETRY_MS);
      }
    }
    if (mine()) polling = false;
  }

  function startPolling() {
    clearTimeout(graceTimer);
    graceTimer = null;
    if (polling || (current && FINAL.has(current.status))) return;
    setLive("polling", "Updating as it changes");
    polling = true;
    longPoll(++pollRun);
  }

  function stopPolling() {
    clearTimeout(graceTimer);
    polling = false;
    graceTimer = null;
  }

  function startLive() {
    if (LONG_POLL_ONLY || !("EventSource" in window)) {
      startPolling();
      return;
    }
    const es = new EventSource(`${api}/events`);
    events = es;
    es.addEventListener("status", (ev) => {
      let data;
      try {
        data = JSON.parse(ev.data);
      } catch (_) {
        return;
      }
      stopPolling();
      if (!data || !FINAL.has(data.status)) setLive("sse", "Live");
      apply(data);
    });
    es.addEventListener("error", () => {
      if (events !== es) return;
      if (es.readyState === EventSource.CLOSED) {
        // The stream was refused (not retried by the browser): poll.
        events = null;
        startPolling();
      } else if (!polling && !graceTimer) {
        // The browser is reconnecting; poll if that takes a while.
        setLive("connecting", "Reconnecting…");
        graceTimer = setTimeout(startPolling, RECONNECT_GRACE_MS);
      }
    });
  }

  // ---- Cancel ----

  async function cancel() {
    const button = $("cancel");
    const msg = $("order-msg");
    button.disabled = true;
    button.textContent = "Cancelling…";
    msg.className = "notice";
    msg.textContent = "";
    const BACKOFF = [500, 1000, 2000, 4000];
    try {
      for (let attempt = 0; ; attempt++) {
        try {
          // Cancelling twice is harmless, so network errors and 503s are retried.
          await Web.json(`${api}/cancel`, { method: "POST" });
          break;
        } catch (e) {
          if (!e.transient || attempt >= BACKOFF.length) throw e;
          msg.className = "notice info";
          msg.textContent = "The shop is busy; trying again…";
          await Web.sleep(BACKOFF[attempt]);
        }
      }
      msg.className = "notice ok";
      msg.textContent = "Your order is cancelled.";
    } catch (e) {
      msg.className = "notice error";
      msg.textContent = e.code === "order_rejected"
        ? `Nothing to cancel: ${e.detail}`
        : `We couldn't cancel the order: ${e.detail}`;
    } finally {
      button.disabled = false;
      button.textContent = "Cancel order";
      refresh();
    }
  }

  // ---- Start ----

  document.addEventListener("DOMContentLoaded", async () => {
    $("order-id").textContent = orderId;
    $("cancel").addEventListener("click", cancel);
    const msg = $("load-msg");
    for (let attempt = 0; ; attempt++) {
      try {
        const order = await Web.json(api);
        msg.className = "notice";
        msg.textContent = "";
        renderDetails(order);
        apply(order);
        break;
      } catch (e) {
        msg.className = "notice error";
        if (e.status === 404 || e.status === 400) {
          msg.replaceChildren(
            e.status === 404 ? `We can't find this order. ${e.detail} ` : "This isn't a valid order link. ",
            h("a", { href: "/", text: "Back to the shop" }),
          );
          return;
        }
        msg.textContent = `${e.detail} Retrying…`;
        await Web.sleep(Math.min(5000, 1000 * (attempt + 1)));
      }
    }
    if (!FINAL.has(current.status)) startLive();
    else setLive("done", "Final status");
  });
})();
