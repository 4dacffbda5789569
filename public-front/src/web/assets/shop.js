// The storefront: catalog search and paging, a cart kept by the shop
// (only its id is in localStorage, so a reload or another tab sees the same
// cart) with the stock inventory holds for each line, and a checkout that
// can be retried safely with the same Idempotency-Key.
"use strict";

(() => {
  const { h, money } = Web;
  const $ = (id) => document.getElementById(id);

  const PAGE_SIZE = 24;
  const MAX_QTY = 1000;
  const LOW_STOCK = 5;
  const CART_KEY = "webshop.cart.v2";
  const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
  // Waits between checkout attempts after a 503 or a network error (ms).
  const BACKOFF = [500, 1000, 2000, 4000, 8000];
  // How often the cart is read again while the page is shown (ms): soon
  // while inventory is answering a change or a hold is about to run out,
  // every few seconds otherwise, never for an empty cart or a hidden page.
  const POLL_SOON_MS = 1000;
  const POLL_MS = 4000;

  // ---- Cart (kept by the shop; its id survives reloads, shared by tabs) ----

  /**
   * What this browser keeps: { id: the cart's id or null, email,
   *   attempt: {key, cart, version, email} | null, version }.
   * `attempt` is the Idempotency-Key of the checkout in progress and what it
   * was made for (that cart at that version, with that email): retrying it
   * reuses the key, so the retry is the same order; after any change a new
   * checkout gets a new key. `version` is the newest version of the cart
   * seen here: another tab saving a newer one makes this tab read it again.
   */
  function loadSaved() {
    const c = Web.store.get(CART_KEY, {});
    const id = typeof c.id === "string" && UUID.test(c.id) ? c.id : null;
    const a = c.attempt;
    const attempt = a && typeof a.key === "string" && a.cart === id && Number.isInteger(a.version) && typeof a.email === "string"
      ? a
      : null;
    const version = Number.isInteger(c.version) ? c.version : 0;
    return { id, email: typeof c.email === "string" ? c.email : "", attempt, version };
  }
  let saved = loadSaved();
  const save = () => Web.store.set(CART_KEY, saved);

  /** The cart as the shop last showed it (its CartView); null until read. */
  let view = null;
  /** The last read of the cart failed: why (shown while there is no view). */
  let readError = null;
  let placing = false;
  /** Changes sent and not answered yet. */
  let changing = 0;
  /** SKUs whose availability the cart may have changed: their product cards are read again once inventory has answered. */
  const staleStock = new Set();

  const cartUrl = (id, path) => `/api/carts/${encodeURIComponent(id)}${path || ""}`;
  const lineOf = (cart, sku) => (cart ? cart.lines.find((l) => l.sku === sku) : undefined);

  /** Forgets the cart (checked out, or unknown to the shop): the next add starts a new one. */
  function dropCart() {
    saved = { id: null, email: saved.email, attempt: null, version: 0 };
    view = null;
    save();
  }

  /** Shows `cart`, an answer of the shop, unless a newer one is shown already. */
  function accept(cart) {
    if (!cart || cart.cart_id !== saved.id) return;
    if (cart.status !== "open") {
      // Checked out, maybe by another tab or a checkout whose answer was lost.
      if (cart.order_id) Web.rememberOrder(cart.order_id);
      dropCart();
      renderCart();
      renderRecent();
      return;
    }
    const before = view && view.cart_id === cart.cart_id ? view : null;
    // A read that a change overtook.
    if (before && cart.version < before.version) return;
    view = cart;
    readError = null;
    if (cart.version > saved.version) {
      saved.version = cart.version;
      save();
    }
    for (const sku of new Set([...(before ? before.lines : []), ...cart.lines].map((l) => l.sku))) {
      const a = lineOf(before, sku);
      const b = lineOf(cart, sku);
      if (before && (!a || !b || a.held !== b.held || a.hold !== b.hold)) staleStock.add(sku);
    }
    if (!before || JSON.stringify(before) !== JSON.stringify(cart)) renderCart();
  }

  // Changes run one at a time, in the order they were made.
  let queue = Promise.resolve();
  function enqueue(task) {
    const done = queue.then(task);
    queue = done.catch(() => {});
    return done;
  }

  /**
   * Sets the line of `sku` to `quantity(cart shown)` units (0 removes it).
   * Without a cart (or when the shop no longer has it, or it was checked
   * out) `create` starts a new one; otherwise that is an error. Throws
   * Web.ApiError.
   */
  function setLine(sku, quantity, create) {
    return enqueue(async () => {
      for (let fresh = false; ; fresh = true) {
        if (!saved.id) {
          if (!create) throw new Web.ApiError(404, "unknown_cart", "Your cart is gone: add the items again.", null);
          const cart = await Web.json("/api/carts", { method: "POST" });
          saved = { id: cart.cart_id, email: saved.email, attempt: null, version: cart.version };
          save();
          accept(cart);
        }
        const id = saved.id;
        const n = Math.max(0, Math.min(MAX_QTY, quantity(view)));
        staleStock.add(sku);
        changing++;
        renderCart();
        try {
          accept(
            await Web.json(cartUrl(id, `/items/${encodeURIComponent(sku)}`), {
              method: "PUT",
              headers: { "Content-Type": "application/json" },
              body: JSON.stringify({ quantity: n }),
            }),
          );
          return;
        } catch (e) {
          const gone = e.code === "unknown_cart" || e.code === "cart_checked_out";
          if (!gone || id !== saved.id) throw e;
          dropCart();
          if (e.code === "cart_checked_out") readCheckedOut(id);
          if (!create || fresh) throw e;
        } finally {
          changing--;
          renderCart();
          schedulePoll(POLL_SOON_MS);
        }
      }
    });
  }

  /** A cart checked out elsewhere: its order goes under "your recent orders". */
  async function readCheckedOut(id) {
    try {
      const cart = await Web.json(cartUrl(id));
      if (cart.order_id) {
        Web.rememberOrder(cart.order_id);
        renderRecent();
      }
    } catch (_) {
      // Only for the list of recent orders.
    }
  }

  /** A change of a cart line from its buttons; errors go to the cart's notice. */
  function changeLine(sku, quantity) {
    if (placing) return;
    setLine(sku, quantity, false).then(
      () => message("", ""),
      (e) => message("error", `Your cart wasn't changed: ${e.detail}`),
    );
  }

  // ---- Reading the cart ----

  let pollTimer = null;
  let reading = false;

  /** Reads the cart again after `ms` (default: as `pollDelay` says), if it is worth it. */
  function schedulePoll(ms) {
    clearTimeout(pollTimer);
    pollTimer = null;
    // While a checkout runs, its answer says what became of the cart.
    if (document.hidden || placing || !saved.id) return;
    if (view && view.lines.length === 0 && staleStock.size === 0) return;
    pollTimer = setTimeout(readCart, ms === undefined ? pollDelay() : ms);
  }

  function pollDelay() {
    // The cart couldn't be read at all: try again, but not every second.
    if (!view && readError) return POLL_MS;
    if (!view || staleStock.size > 0 || view.lines.some((l) => l.hold === "pending")) return POLL_SOON_MS;
    const left = holdsLeftMs();
    return left !== null && left < POLL_MS + POLL_SOON_MS ? POLL_SOON_MS : POLL_MS;
  }

  /** Milliseconds until the holds run out (negative once past), or null. */
  function holdsLeftMs() {
    if (!view || !view.holds_expire_at) return null;
    const at = Date.parse(view.holds_expire_at);
    return Number.isNaN(at) ? null : at - Date.now();
  }

  async function readCart() {
    if (reading || placing || !saved.id) return;
    reading = true;
    const id = saved.id;
    try {
      accept(await Web.json(cartUrl(id)));
      // Only a read made when nothing is in flight shows inventory's answer.
      if (changing === 0 && view && !view.lines.some((l) => l.hold === "pending")) refreshStock();
    } catch (e) {
      if (id === saved.id && e.code === "unknown_cart") {
        dropCart();
      } else if (id === saved.id) {
        readError = e.detail;
      }
      renderCart();
    } finally {
      reading = false;
      schedulePoll();
    }
  }

  // ---- Rendering the cart ----

  const HOLD_TEXT = {
    held: () => "Held for you",
    pending: () => "Holding…",
    short: (l) => (l.held > 0 ? `Only ${l.held} held: ${l.quantity - l.held} short` : `Not held: ${l.quantity} short`),
    expired: () => "Hold expired",
    ordered: () => "Ordered",
  };

  function holdBadge(l) {
    const text = (HOLD_TEXT[l.hold] || (() => l.hold))(l);
    return h("span", { class: `hold ${l.hold}`, dataset: { hold: l.hold, held: l.held }, text });
  }

  function renderCart() {
    const lines = view ? view.lines : [];
    const n = lines.reduce((sum, l) => sum + l.quantity, 0);
    $("cart-count").textContent = String(n);
    const empty = lines.length === 0;
    const loading = saved.id && !view;
    $("cart-empty").hidden = !empty;
    $("cart-empty").textContent = loading
      ? (readError ? `Couldn't load your cart: ${readError} We'll keep trying.` : "Loading your cart…")
      : "Your cart is empty. Add something from the catalog.";
    $("cart-summary").hidden = empty;
    $("checkout").hidden = empty;
    $("cart-total").textContent = view ? money(view.total_cents, view.currency) : "";
    if (document.activeElement !== $("email")) $("email").value = saved.email;
    const busy = placing;

    $("cart-lines").replaceChildren(
      ...lines.map((l) => {
        const name = l.name || l.sku;
        return h(
          "li",
          { class: "cart-line", dataset: { sku: l.sku, hold: l.hold } },
          h("span", { class: "name", text: name }),
          h("span", {
            class: "line-total",
            text: l.line_total_cents === undefined ? "–" : money(l.line_total_cents, view.currency),
          }),
          h(
            "span",
            { class: "stepper" },
            h("button", {
              class: "secondary icon", type: "button", text: "−", "aria-label": `One less ${name}`,
              disabled: l.quantity <= 1 || busy,
              onclick: () => changeLine(l.sku, (c) => (lineOf(c, l.sku) || l).quantity - 1),
            }),
            h("span", { class: "n qty", text: l.quantity }),
            h("button", {
              class: "secondary icon", type: "button", text: "+", "aria-label": `One more ${name}`,
              disabled: l.quantity >= MAX_QTY || busy,
              onclick: () => changeLine(l.sku, (c) => (lineOf(c, l.sku) || l).quantity + 1),
            }),
          ),
          h("button", {
            class: "link remove", type: "button", text: "Remove", "aria-label": `Remove ${name}`, disabled: busy,
            onclick: () => changeLine(l.sku, () => 0),
          }),
          holdBadge(l),
        );
      }),
    );
    renderHolds();
    $("place-order").disabled = placing || empty;
    $("email").disabled = placing;
  }

  /** "14:05" from milliseconds. */
  function clock(ms) {
    const s = Math.max(0, Math.ceil(ms / 1000));
    const m = Math.floor(s / 60);
    return m >= 60
      ? `${Math.floor(m / 60)}:${String(m % 60).padStart(2, "0")}:${String(s % 60).padStart(2, "0")}`
      : `${m}:${String(s % 60).padStart(2, "0")}`;
  }

  /** The line under the cart saying how long its stock is held (redrawn every second). */
  function renderHolds() {
    const lines = view ? view.lines : [];
    const left = holdsLeftMs();
    const held = lines.some((l) => l.held > 0);
    let text = "";
    let countdown = "";
    let kind = "";
    if (lines.some((l) => l.hold === "expired")) {
      text = "The hold on your items ran out, so others can buy them now. Change your cart to hold them again, or place your order to take what is still in stock.";
      kind = "expired";
    } else if (changing > 0 || lines.some((l) => l.hold === "pending")) {
      text = "Holding your items…";
      kind = "pending";
    } else if (held && left !== null) {
      text = "Your items are held for you for";
      countdown = clock(left);
      kind = "held";
    }
    $("holds").hidden = text === "";
    $("holds").className = `holds small ${kind}`;
    $("holds").dataset.state = kind;
    $("holds-text").textContent = text;
    $("holds-countdown").textContent = countdown;
    $("holds-countdown").title = left === null ? "" : `until ${new Date(Date.now() + left).toLocaleTimeString()}`;
  }

  // ---- Catalog ----

  let query = "";
  let failed = false; // the last catalog load failed: searching again retries it
  let cursor = null;
  let seq = 0; // drops answers to searches that were overtaken
  /** The product cards shown, by SKU: each can show new availability in place. */
  const cards = new Map();

  function stockBadge(available) {
    if (available <= 0) return h("span", { class: "stock out", text: "Out of stock" });
    if (available <= LOW_STOCK) return h("span", { class: "stock low", text: `Only ${available} left` });
    return h("span", { class: "stock in", text: `${available} in stock` });
  }

  function productCard(p) {
    const qty = h("input", {
      class: "qty", type: "number", min: 1, max: MAX_QTY, step: 1, value: 1, inputmode: "numeric",
      "aria-label": `Quantity of ${p.name}`,
    });
    const hint = h("p", { class: "hint", hidden: true });
    const add = h("button", { class: "add", type: "button" });
    const status = h("p", { class: "added", role: "status" });
    let badge = stockBadge(p.available);
    const showHint = () => {
      const n = Number(qty.value);
      hint.hidden = !(n > p.available);
      hint.textContent = `Only ${p.available} in stock: an order for more will be rejected.`;
    };
    /** Shows `available` (stock held for carts is not available). */
    const update = (available) => {
      p.available = available;
      const out = available <= 0;
      const fresh = stockBadge(available);
      badge.replaceWith(fresh);
      badge = fresh;
      qty.disabled = out;
      add.disabled = out;
      add.textContent = out ? "Out of stock" : "Add to cart";
      if (!hint.hidden) showHint();
    };
    qty.addEventListener("input", showHint);
    add.addEventListener("click", async () => {
      const n = Number(qty.value);
      status.className = "added";
      if (!Number.isInteger(n) || n < 1 || n > MAX_QTY) {
        status.textContent = `Choose a quantity from 1 to ${MAX_QTY}.`;
        return;
      }
      if (placing) {
        status.textContent = "Your order is being placed: add more after it is.";
        return;
      }
      qty.value = 1;
      hint.hidden = true;
      status.textContent = "Adding…";
      try {
        await setLine(p.sku, (c) => (lineOf(c, p.sku) ? lineOf(c, p.sku).quantity : 0) + n, true);
        status.textContent = `Added ${n} to your cart.`;
      } catch (e) {
        status.className = "added error";
        status.textContent = `Not added: ${e.detail}`;
      }
    });
    const card = h(
      "li",
      { class: "card product", dataset: { sku: p.sku } },
      h("h3", { class: "name", text: p.name }),
      h("p", { class: "sku mono", text: p.sku }),
      h("p", { class: "desc", text: p.description }),
      h("div", { class: "row" }, h("span", { class: "price", text: money(p.price_cents, p.currency) }), badge),
      h("div", { class: "buy" }, qty, add),
      hint,
      status,
    );
    update(p.available);
    cards.set(p.sku, { card, update });
    return card;
  }

  /**
   * Reads the availability of the products the cart changed (a hold taken,
   * given back or run out) and shows it on their cards. Called once
   * inventory has answered the cart, so the read sees its decision.
   */
  async function refreshStock() {
    const skus = [...staleStock];
    staleStock.clear();
    await Promise.all(
      skus.map(async (sku) => {
        const shown = cards.get(sku);
        if (!shown || !shown.card.isConnected) return;
        try {
          const p = await Web.json(`/api/catalog/${encodeURIComponent(sku)}`);
          if (Number.isInteger(p.available)) shown.update(p.available);
        } catch (_) {
          // The card keeps what it showed; the next change reads again.
        }
      }),
    );
  }

  async function loadCatalog(append) {
    const mine = ++seq;
    const params = new URLSearchParams({ limit: String(PAGE_SIZE) });
    if (query) params.set("q", query);
    if (append && cursor) params.set("cursor", cursor);
    const status = $("catalog-status");
    status.className = "catalog-status muted";
    status.textContent = append ? "Loading more…" : "Loading…";
    $("more").disabled = true;
    try {
      const page = await Web.json(`/api/catalog?${params}`);
      if (mine !== seq) return;
      failed = false;
      if (!append) cards.clear();
      const shown = page.items.map(productCard);
      if (append) $("products").append(...shown);
      else $("products").replaceChildren(...shown);
      cursor = page.next_cursor || null;
      $("more").hidden = !cursor;
      const count = $("products").children.length;
      status.textContent = count === 0
        ? (query ? `No products match “${query}”.` : "The catalog is empty.")
        : (query ? `${count} product${count === 1 ? "" : "s"} matching “${query}”${cursor ? " so far" : ""}.` : "");
    } catch (e) {
      if (mine !== seq) return;
      failed = true;
      status.className = "catalog-status notice error";
      status.replaceChildren(
        `Couldn't load the catalog: ${e.detail} `,
        h("button", { class: "link", type: "button", text: "Try again", onclick: () => loadCatalog(append) }),
      );
    } finally {
      if (mine === seq) $("more").disabled = false;
    }
  }

  // Runs a search unless its results are already shown (or on their way):
  // re-rendering the same cards would reset a quantity the user is typing.
  function search(q) {
    if (q.trim() === query && !failed && seq > 0) return;
    query = q.trim();
    cursor = null;
    const url = new URL(location.href);
    if (query) url.searchParams.set("q", query);
    else url.searchParams.delete("q");
    history.replaceState(null, "", url);
    loadCatalog(false);
  }

  // ---- Checkout ----

  function message(kind, ...parts) {
    const el = $("checkout-msg");
    el.className = `notice ${kind}`;
    el.replaceChildren(...parts);
  }

  /**
   * POST /api/carts/{id}/checkout, retried after a 503 or a network error
   * with the same key: the same cart and key always make the same order, so
   * a retry can't make a second one. Resolves to {order_id, status}; throws
   * Web.ApiError.
   */
  async function checkoutWithRetry(cartId, key, body, onRetry) {
    for (let attempt = 0; ; attempt++) {
      let error;
      try {
        return await Web.json(cartUrl(cartId, "/checkout"), {
          method: "POST",
          headers: { "Content-Type": "application/json", "Idempotency-Key": key },
          body,
        });
      } catch (e) {
        error = e;
      }
      if (!error.transient || attempt >= BACKOFF.length) throw error;
      const base = Math.max(BACKOFF[attempt], (error.retryAfter || 0) * 1000);
      const wait = Math.min(10000, base) * (0.8 + Math.random() * 0.4);
      onRetry(attempt + 2, wait, error);
      await Web.sleep(wait);
    }
  }

  async function checkout(ev) {
    ev.preventDefault();
    if (placing || !view || view.lines.length === 0) return;
    const email = $("email");
    if (!email.checkValidity()) {
      message("error", "Please enter a valid email address so we can send your order confirmation.");
      email.focus();
      return;
    }
    saved.email = email.value.trim();
    placing = true;
    renderCart();
    $("place-order").textContent = "Placing order…";
    message("info", "Placing your order…");
    try {
      // The order is made of the cart as the shop has it: changes still on
      // their way go first.
      await queue;
      const cartId = saved.id;
      if (!cartId || !view || view.lines.length === 0) {
        message("error", "Your cart is empty.");
        return;
      }
      const a = saved.attempt;
      if (!a || a.cart !== cartId || a.version !== view.version || a.email !== saved.email) {
        saved.attempt = { key: Web.uuid(), cart: cartId, version: view.version, email: saved.email };
      }
      save();
      const body = JSON.stringify({ customer_email: saved.email });
      const placed = await checkoutWithRetry(cartId, saved.attempt.key, body, (n, wait) =>
        message("info", `The shop is busy. Trying again in ${Math.ceil(wait / 1000)} s (attempt ${n} of ${BACKOFF.length + 1})…`),
      );
      Web.rememberOrder(placed.order_id);
      dropCart();
      message("ok", "Order placed. Taking you to it…");
      location.assign(`/orders/${encodeURIComponent(placed.order_id)}`);
      return;
    } catch (e) {
      if (e.code === "idempotency_key_reused") {
        saved.attempt = null;
        save();
        message("error", "This checkout clashed with an earlier one. Please press Place order again.");
      } else if (e.transient) {
        message(
          "error",
          "We couldn't confirm your order yet. Your cart is saved: pressing Place order again is safe and won't create a second order.",
          h("br"),
          h("span", { class: "small", text: e.detail }),
        );
      } else if (e.code === "cart_changed") {
        // The cart is read again below: look at it and place the order again.
        saved.attempt = null;
        save();
        message("error", e.detail);
      } else if (e.code === "cart_checked_out" || e.code === "unknown_cart") {
        const id = saved.id;
        dropCart();
        if (id && e.code === "cart_checked_out") readCheckedOut(id);
        message("error", `Your order wasn't placed: ${e.detail}`);
      } else if (e.code === "unknown_sku") {
        message("error", `${e.detail} Please remove it from your cart.`);
      } else {
        message("error", `Your order wasn't placed: ${e.detail}`);
      }
    } finally {
      placing = false;
      $("place-order").textContent = "Place order";
      renderCart();
      schedulePoll(0);
    }
  }

  function renderRecent() {
    const list = Web.recentOrders();
    $("recent").hidden = list.length === 0;
    $("recent-list").replaceChildren(
      ...list.map((o) =>
        h("li", {},
          h("a", { href: `/orders/${encodeURIComponent(o.id)}`, class: "mono", text: o.id.slice(0, 8) }),
          h("span", { class: "muted", text: ` placed ${Web.dateTime(o.at)}` })),
      ),
    );
  }

  // ---- Wiring ----

  document.addEventListener("DOMContentLoaded", () => {
    let typing;
    $("search").addEventListener("submit", (ev) => {
      ev.preventDefault();
      clearTimeout(typing);
      search($("q").value);
    });
    $("q").addEventListener("input", () => {
      clearTimeout(typing);
      typing = setTimeout(() => search($("q").value), 300);
    });
    $("more").addEventListener("click", () => loadCatalog(true));
    $("checkout").addEventListener("submit", checkout);
    $("email").addEventListener("change", () => {
      if (placing) return;
      saved.email = $("email").value.trim();
      save();
    });
    // Another tab started, changed or checked out the cart.
    window.addEventListener("storage", (ev) => {
      if (ev.key === CART_KEY && !placing) {
        const other = loadSaved();
        const newer = other.id !== saved.id || other.version > (view ? view.version : 0);
        saved = other;
        if (!view || view.cart_id !== saved.id) view = null;
        renderCart();
        if (newer && saved.id) readCart();
        else schedulePoll();
      }
      if (ev.key === "webshop.orders.v1") renderRecent();
    });
    // Polling stops while the page is hidden and catches up when shown.
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && saved.id) readCart();
      else schedulePoll();
    });
    // The countdown; a hold running out is read from the shop soon after.
    setInterval(() => {
      if (!document.hidden && view) renderHolds();
    }, 1000);

    const q = new URLSearchParams(location.search).get("q") || "";
    $("q").value = q;
    query = q.trim();
    renderCart();
    renderRecent();
    if (saved.id) {
      readCart().then(() => {
        if (saved.attempt && view && view.lines.length > 0) {
          message("warn", "Your last checkout wasn't confirmed. Press Place order to try again: it's safe and won't create a second order.");
        }
      });
    }
    loadCatalog(false);
  });
})();
