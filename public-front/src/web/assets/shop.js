// The storefront: catalog search and paging, a cart kept in localStorage,
// and checkout that can be retried safely with the same Idempotency-Key.
"use strict";

(() => {
  const { h, money } = Web;
  const $ = (id) => document.getElementById(id);

  const PAGE_SIZE = 24;
  const MAX_QTY = 1000;
  const LOW_STOCK = 5;
  const CART_KEY = "webshop.cart.v1";
  // Waits between checkout attempts after a 503 or a network error (ms).
  const BACKOFF = [500, 1000, 2000, 4000, 8000];

  // ---- Cart (survives reloads; shared between tabs) ----

  /**
   * { lines: [{sku, name, price_cents, currency, available, quantity}],
   *   email, attempt: {key, body} | null }
   * `attempt` is the Idempotency-Key of the checkout in progress and the
   * exact body it was made for: retrying that body reuses the key (so the
   * retry is the same order); any change to the cart drops it.
   */
  function loadCart() {
    const c = Web.store.get(CART_KEY, {});
    const lines = Array.isArray(c.lines)
      ? c.lines.filter((l) => l && typeof l.sku === "string" && Number.isInteger(l.quantity) && l.quantity > 0)
      : [];
    const attempt = c.attempt && typeof c.attempt.key === "string" ? c.attempt : null;
    return { lines, email: typeof c.email === "string" ? c.email : "", attempt };
  }
  let cart = loadCart();
  let placing = false;
  const saveCart = () => Web.store.set(CART_KEY, cart);

  function changeCart(mutate) {
    if (placing) return;
    mutate();
    cart.attempt = null;
    saveCart();
    renderCart();
  }

  function addToCart(p, qty) {
    changeCart(() => {
      const line = cart.lines.find((l) => l.sku === p.sku);
      if (line) {
        line.quantity = Math.min(MAX_QTY, line.quantity + qty);
        Object.assign(line, { name: p.name, price_cents: p.price_cents, currency: p.currency, available: p.available });
      } else {
        cart.lines.push({ sku: p.sku, name: p.name, price_cents: p.price_cents, currency: p.currency, available: p.available, quantity: qty });
      }
    });
  }

  function cartTotal() {
    return cart.lines.reduce((sum, l) => sum + l.price_cents * l.quantity, 0);
  }

  function renderCart() {
    const n = cart.lines.reduce((sum, l) => sum + l.quantity, 0);
    $("cart-count").textContent = String(n);
    const empty = cart.lines.length === 0;
    $("cart-empty").hidden = !empty;
    $("cart-summary").hidden = empty;
    $("checkout").hidden = empty;
    const currency = empty ? "EUR" : cart.lines[0].currency;
    $("cart-total").textContent = money(cartTotal(), currency);
    if (document.activeElement !== $("email")) $("email").value = cart.email;

    $("cart-lines").replaceChildren(
      ...cart.lines.map((l) => {
        const over = Number.isInteger(l.available) && l.quantity > l.available;
        return h(
          "li",
          { class: "cart-line", dataset: { sku: l.sku } },
          h("span", { class: "name", text: l.name }),
          h("span", { class: "line-total", text: money(l.price_cents * l.quantity, l.currency) }),
          h(
            "span",
            { class: "stepper" },
            h("button", {
              class: "secondary icon", type: "button", text: "−", "aria-label": `One less ${l.name}`,
              disabled: l.quantity <= 1 || placing,
              onclick: () => changeCart(() => { l.quantity -= 1; }),
            }),
            h("span", { class: "n qty", text: l.quantity }),
            h("button", {
              class: "secondary icon", type: "button", text: "+", "aria-label": `One more ${l.name}`,
              disabled: l.quantity >= MAX_QTY || placing,
              onclick: () => changeCart(() => { l.quantity += 1; }),
            }),
          ),
          h("button", {
            class: "link remove", type: "button", text: "Remove", disabled: placing,
            onclick: () => changeCart(() => { cart.lines = cart.lines.filter((x) => x !== l); }),
          }),
          over ? h("span", { class: "hint", text: `Only ${l.available} in stock: this order will likely be rejected.` }) : null,
        );
      }),
    );
    $("place-order").disabled = placing || empty;
    $("email").disabled = placing;
  }

  // ---- Catalog ----

  let query = "";
  let failed = false; // the last catalog load failed: searching again retries it
  let cursor = null;
  let seq = 0; // drops answers to searches that were overtaken

  function stockBadge(available) {
    if (available <= 0) return h("span", { class: "stock out", text: "Out of stock" });
    if (available <= LOW_STOCK) return h("span", { class: "stock low", text: `Only ${available} left` });
    return h("span", { class: "stock in", text: `${available} in stock` });
  }

  function productCard(p) {
    const out = p.available <= 0;
    const qty = h("input", {
      class: "qty", type: "number", min: 1, max: MAX_QTY, step: 1, value: 1, inputmode: "numeric",
      "aria-label": `Quantity of ${p.name}`, disabled: out,
    });
    const hint = h("p", { class: "hint", hidden: true });
    const add = h("button", { class: "add", type: "button", text: out ? "Out of stock" : "Add to cart", disabled: out });
    const status = h("p", { class: "added", role: "status" });
    qty.addEventListener("input", () => {
      const n = Number(qty.value);
      hint.hidden = !(n > p.available);
      hint.textContent = `Only ${p.available} in stock: an order for more will be rejected.`;
    });
    add.addEventListener("click", () => {
      const n = Number(qty.value);
      if (!Number.isInteger(n) || n < 1 || n > MAX_QTY) {
        status.textContent = `Choose a quantity from 1 to ${MAX_QTY}.`;
        return;
      }
      addToCart(p, n);
      status.textContent = `Added ${n} to your cart.`;
      qty.value = 1;
      hint.hidden = true;
    });
    return h(
      "li",
      { class: "card product", dataset: { sku: p.sku } },
      h("h3", { class: "name", text: p.name }),
      h("p", { class: "sku mono", text: p.sku }),
      h("p", { class: "desc", text: p.description }),
      h("div", { class: "row" }, h("span", { class: "price", text: money(p.price_cents, p.currency) }), stockBadge(p.available)),
      h("div", { class: "buy" }, qty, add),
      hint,
      status,
    );
  }

  /** Keeps cart lines' names, prices and availability current. */
  function refreshCartFrom(products) {
    let changed = false;
    for (const p of products) {
      const line = cart.lines.find((l) => l.sku === p.sku);
      if (line && (line.price_cents !== p.price_cents || line.available !== p.available || line.name !== p.name)) {
        Object.assign(line, { name: p.name, price_cents: p.price_cents, currency: p.currency, available: p.available });
        changed = true;
      }
    }
    if (changed && !placing) {
      saveCart();
      renderCart();
    }
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
      const cards = page.items.map(productCard);
      if (append) $("products").append(...cards);
      else $("products").replaceChildren(...cards);
      cursor = page.next_cursor || null;
      $("more").hidden = !cursor;
      const shown = $("products").children.length;
      status.textContent = shown === 0
        ? (query ? `No products match “${query}”.` : "The catalog is empty.")
        : (query ? `${shown} product${shown === 1 ? "" : "s"} matching “${query}”${cursor ? " so far" : ""}.` : "");
      refreshCartFrom(page.items);
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
   * POST /api/orders, retried after a 503 or a network error with the same
   * key: the front maps the key to one order id, so a retry can't make a
   * second order. Resolves to {order_id, status}; throws Web.ApiError.
   */
  async function placeWithRetry(key, body, onRetry) {
    for (let attempt = 0; ; attempt++) {
      let error;
      try {
        return await Web.json("/api/orders", {
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
    if (placing || cart.lines.length === 0) return;
    const email = $("email");
    if (!email.checkValidity()) {
      message("error", "Please enter a valid email address so we can send your order confirmation.");
      email.focus();
      return;
    }
    cart.email = email.value.trim();
    const body = JSON.stringify({
      customer_email: cart.email,
      items: cart.lines.map((l) => ({ sku: l.sku, quantity: l.quantity })),
    });
    if (!cart.attempt || cart.attempt.body !== body) cart.attempt = { key: Web.uuid(), body };
    saveCart();

    placing = true;
    renderCart();
    $("place-order").textContent = "Placing order…";
    message("info", "Placing your order…");
    try {
      const placed = await placeWithRetry(cart.attempt.key, body, (n, wait) =>
        message("info", `The shop is busy. Trying again in ${Math.ceil(wait / 1000)} s (attempt ${n} of ${BACKOFF.length + 1})…`),
      );
      Web.rememberOrder(placed.order_id);
      cart = { lines: [], email: cart.email, attempt: null };
      saveCart();
      message("ok", "Order placed. Taking you to it…");
      location.assign(`/orders/${encodeURIComponent(placed.order_id)}`);
      return;
    } catch (e) {
      if (e.code === "idempotency_key_reused") {
        cart.attempt = null;
        saveCart();
        message("error", "This checkout clashed with an earlier one. Please press Place order again.");
      } else if (e.transient) {
        message(
          "error",
          "We couldn't confirm your order yet. Your cart is saved: pressing Place order again is safe and won't create a second order.",
          h("br"),
          h("span", { class: "small", text: e.detail }),
        );
      } else if (e.code === "unknown_sku") {
        message("error", `${e.detail} Please remove it from your cart.`);
      } else {
        message("error", `Your order wasn't placed: ${e.detail}`);
      }
    } finally {
      placing = false;
      $("place-order").textContent = "Place order";
      renderCart();
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
      cart.email = $("email").value.trim();
      saveCart();
    });
    // Another tab changed the cart.
    window.addEventListener("storage", (ev) => {
      if (ev.key === CART_KEY && !placing) {
        cart = loadCart();
        renderCart();
      }
      if (ev.key === "webshop.orders.v1") renderRecent();
    });

    const q = new URLSearchParams(location.search).get("q") || "";
    $("q").value = q;
    query = q.trim();
    renderCart();
    renderRecent();
    if (cart.attempt && cart.lines.length > 0) {
      message("warn", "Your last checkout wasn't confirmed. Press Place order to try again: it's safe and won't create a second order.");
    }
    loadCatalog(false);
  });
})();
