// Shared by every page: DOM building, money and time formatting, and
// reading the API's problem+json errors. No framework, no build step.
"use strict";

const Web = (() => {
  /** Builds an element. Text always goes in as text nodes, never parsed as HTML. */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") el.className = v;
      else if (k === "text") el.textContent = v;
      else if (k === "dataset") Object.assign(el.dataset, v);
      else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else if (v === true) el.setAttribute(k, "");
      else el.setAttribute(k, String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }

  const formats = new Map();
  /** "€249.00" from 24900 and "EUR". */
  function money(cents, currency) {
    const cur = currency || "EUR";
    if (!formats.has(cur)) {
      try {
        formats.set(cur, new Intl.NumberFormat(undefined, { style: "currency", currency: cur }));
      } catch (_) {
        formats.set(cur, { format: (n) => `${n.toFixed(2)} ${cur}` });
      }
    }
    return formats.get(cur).format(cents / 100);
  }

  function dateTime(value) {
    const d = new Date(value);
    return Number.isNaN(d.getTime()) ? "" : d.toLocaleString();
  }

  /** "3 s ago", "5 min ago", for operator views. */
  function ago(ms) {
    if (ms === null || ms === undefined) return "–";
    const s = Math.max(0, Math.round(ms / 1000));
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.round(s / 60)} min`;
    return `${Math.round(s / 3600)} h`;
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  /** A random UUID; works on plain-http origins too, where randomUUID doesn't exist. */
  function uuid() {
    if (crypto.randomUUID) return crypto.randomUUID();
    const b = crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const hex = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
    return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
  }

  /** An error carrying the API's problem: `code`, `detail`, HTTP `status`. */
  class ApiError extends Error {
    constructor(status, code, detail, retryAfter) {
      super(detail);
      this.status = status;
      this.code = code;
      this.detail = detail;
      this.retryAfter = retryAfter;
    }
    /** Worth retrying the same request (the server or the network was busy). */
    get transient() {
      return this.status === 0 || this.status === 502 || this.status === 503 || this.status === 504;
    }
  }

  /** Reads a non-2xx response into an ApiError. */
  async function problem(res) {
    let body = null;
    try {
      body = await res.json();
    } catch (_) {
      // Not JSON (a proxy's error page): fall back to the status line.
    }
    const code = (body && body.code) || `http_${res.status}`;
    const detail =
      (body && body.detail) ||
      (res.status >= 500 ? "The shop is having trouble right now. Please try again in a moment." : res.statusText);
    const ra = Number(res.headers.get("Retry-After"));
    return new ApiError(res.status, code, detail, Number.isFinite(ra) && ra > 0 ? ra : null);
  }

  const offline = () =>
    new ApiError(0, "network", "We couldn't reach the shop. Check your connection; we'll keep trying.", null);

  /** fetch + JSON; throws ApiError (status 0 for network errors). */
  async function json(url, options) {
    let res;
    try {
      res = await fetch(url, options);
    } catch (_) {
      throw offline();
    }
    if (!res.ok) throw await problem(res);
    if (res.status === 204) return null;
    return res.json();
  }

  /** localStorage that tolerates being full, disabled or holding junk. */
  const store = {
    get(key, fallback) {
      try {
        const v = JSON.parse(localStorage.getItem(key));
        return v === null ? fallback : v;
      } catch (_) {
        return fallback;
      }
    },
    set(key, value) {
      try {
        localStorage.setItem(key, JSON.stringify(value));
      } catch (_) {
        // Private mode or full: the page still works for this visit.
      }
    },
  };

  /** Orders placed from this browser, newest first, for "your orders". */
  const RECENT_KEY = "webshop.orders.v1";
  function rememberOrder(orderId) {
    const list = store.get(RECENT_KEY, []).filter((o) => o && o.id !== orderId);
    list.unshift({ id: orderId, at: Date.now() });
    store.set(RECENT_KEY, list.slice(0, 10));
  }
  const recentOrders = () => store.get(RECENT_KEY, []).filter((o) => o && typeof o.id === "string");

  const STATUS_TEXT = {
    pending: "We're reserving your items…",
    confirmed: "Confirmed: your items are reserved.",
    rejected: "Rejected: nothing was reserved.",
    cancelled: "Cancelled: any reserved items were released.",
  };

  return { h, money, dateTime, ago, sleep, uuid, ApiError, problem, offline, json, store, rememberOrder, recentOrders, STATUS_TEXT };
})();
