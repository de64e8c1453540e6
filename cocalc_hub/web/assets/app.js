// The hub's web UI, without a framework or a build step. The server sends a small HTML
// shell per page; this module holds what every page shares (the JSON API, forms that
// report errors in words, project state) and loads the page's own module, handing it
// these helpers (so page modules import nothing and are versioned with this file).

const body = document.body;
const BASE = body.dataset.base || "";
const CSRF = document.querySelector('meta[name="csrf-token"]')?.content || "";
const VERSION = new URL(import.meta.url).search;

/** An error from the hub (or the network), with a message meant for people. */
export class ApiError extends Error {
  constructor(message, status, data) {
    super(message);
    this.status = status;
    this.data = data;
  }
}

const STATUS_WORDS = {
  401: "You are not signed in, or your session has ended. Please sign in again.",
  403: "You are not allowed to do that.",
  404: "That does not exist (any more).",
  413: "That is too large.",
  429: "Too many attempts. Wait a minute and try again.",
  502: "The project did not answer. It may have stopped.",
  503: "The hub or the project is not available right now. Try again shortly.",
  504: "That took too long. Try again.",
};

/** "the password must be…" → "The password must be…." */
export function sentence(text) {
  const s = String(text).trim().replace(/^Error:\s*/, "");
  if (!s) return "Something went wrong.";
  return s.charAt(0).toUpperCase() + s.slice(1) + (/[.!?]$/.test(s) ? "" : ".");
}

/** Call ``BASE/api/v2/<endpoint>``: POST with JSON (and the CSRF token), or GET. */
export async function api(endpoint, params = {}, { get = false } = {}) {
  let url = `${BASE}/api/v2/${endpoint}`;
  const init = { credentials: "same-origin", headers: { Accept: "application/json" } };
  if (get) {
    const query = new URLSearchParams(params).toString();
    if (query) url += `?${query}`;
  } else {
    init.method = "POST";
    init.headers["Content-Type"] = "application/json";
    if (CSRF) init.headers["X-CSRF-Token"] = CSRF;
    init.body = JSON.stringify(params);
  }
  let response;
  try {
    response = await fetch(url, init);
  } catch {
    throw new ApiError("Could not reach the hub. Check your connection and try again.", 0);
  }
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) {
    const message = data && typeof data.error === "string" ? data.error
      : STATUS_WORDS[response.status] || `The hub answered with an error (HTTP ${response.status}).`;
    throw new ApiError(sentence(message), response.status, data);
  }
  return data;
}

/** Build an element; strings become text nodes (never HTML). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined && c !== false));
  return node;
}

export function show(node, text) {
  if (!node) return;
  if (text !== undefined) node.textContent = text;
  node.hidden = false;
}

export function hide(node) {
  if (node) node.hidden = true;
}

/**
 * Show what went wrong with an action in ``node``, the error element next to the form or
 * button that caused it, and hide the errors of earlier actions: one error on the page at
 * a time, where the person is looking.
 */
export function showError(node, message) {
  for (const other of document.querySelectorAll('.error[role="alert"]')) {
    if (other !== node) other.hidden = true;
  }
  show(node, message);
}

function describe(e) {
  return e instanceof ApiError ? e.message : sentence(e.message || e);
}

function fieldName(field) {
  const label = field.labels?.[0];
  const text = label ? label.firstChild?.textContent || label.textContent : field.name;
  return text.replace(/\s*\(.*$/, "").trim();
}

/**
 * Run ``action(values, submitter)`` on submit: the form's own checks first, then the
 * call; its buttons are disabled meanwhile, a failure is shown in ``error`` (the form's
 * ``.error`` by default; announced, as it is a role=alert; see showError) and a returned
 * string in ``.ok``.
 */
export function onSubmit(form, action, error = form?.querySelector(".error")) {
  if (!form) return;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const ok = form.querySelector(".ok");
    hide(error);
    hide(ok);
    const invalid = [...form.elements].find((f) => f.willValidate && !f.checkValidity());
    if (invalid) {
      showError(error, `${fieldName(invalid)}: ${invalid.validationMessage}`);
      invalid.focus();
      return;
    }
    const buttons = [...form.querySelectorAll("button")];
    buttons.forEach((b) => { b.disabled = true; });
    form.setAttribute("aria-busy", "true");
    try {
      const message = await action(Object.fromEntries(new FormData(form)), event.submitter);
      if (typeof message === "string") show(ok, message);
    } catch (e) {
      showError(error, describe(e));
    } finally {
      buttons.forEach((b) => { b.disabled = false; });
      form.removeAttribute("aria-busy");
    }
  });
}

/** Run ``action`` on click with the button disabled; errors go to ``errorNode``. */
export function onClick(button, errorNode, action) {
  button.addEventListener("click", async () => {
    hide(errorNode);
    button.disabled = true;
    try {
      await action();
    } catch (e) {
      showError(errorNode, describe(e));
    } finally {
      button.disabled = false;
    }
  });
}

/**
 * Where to go after signing in: only a path on this site under the base path, never
 * another origin ("//evil.example", "/\\evil.example" and "https://…" are refused).
 */
export function safeNext(value) {
  if (typeof value !== "string" || !value.startsWith("/") || value.startsWith("//") || value.includes("\\")) {
    return null;
  }
  let url;
  try {
    url = new URL(value, window.location.origin);
  } catch {
    return null;
  }
  if (url.origin !== window.location.origin) return null;
  if (BASE && url.pathname !== BASE && !url.pathname.startsWith(`${BASE}/`)) return null;
  return url.pathname + url.search + url.hash;
}

// Project state ------------------------------------------------------------------------

const STATE_WORDS = {
  opened: "Stopped", starting: "Starting…", running: "Running", stopping: "Stopping…", error: "Error",
};

/** Show a project's state (text, not only colour) and enable the buttons that make sense. */
export function renderState(badge, buttons, state) {
  const name = state?.state || "opened";
  badge.textContent = STATE_WORDS[name] || name;
  if (name === "error" && state.error) badge.textContent = `Error: ${state.error}`;
  badge.dataset.state = name;
  const can = {
    start: name === "opened" || name === "error",
    stop: name === "running" || name === "starting" || name === "error",
    restart: name === "running",
  };
  for (const button of buttons) {
    if (button.dataset.act in can) button.disabled = !can[button.dataset.act];
  }
}

export function busy(state) {
  return state === "starting" || state === "stopping";
}

/**
 * Call ``tick`` (which returns true while something is changing) every 5 s, every
 * second while busy or shortly after ``soon()``; paused while the tab is hidden. Polling
 * needs nothing in the browser but fetch, where conat would need a socket.io client.
 */
export function poller(tick) {
  let timer = null;
  let running = false;
  let again = false;
  let fastUntil = 0;
  async function run() {
    timer = null;
    if (running) {
      again = true;
      return;
    }
    if (document.hidden) return;
    running = true;
    let changing = false;
    try {
      changing = await tick();
    } catch {
      changing = false; // the page shows errors of its own actions; a failed poll just retries
    }
    running = false;
    if (again) {
      again = false;
      run();
      return;
    }
    if (timer === null) timer = setTimeout(run, changing || Date.now() < fastUntil ? 1000 : 5000);
  }
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && timer === null && !running) run();
  });
  run();
  return {
    soon() {
      fastUntil = Date.now() + 15000;
      if (timer !== null) clearTimeout(timer);
      run();
    },
  };
}

export function when(iso) {
  if (!iso) return "never";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? String(iso) : date.toLocaleString();
}

export const ui = {
  BASE, api, ApiError, el, show, hide, showError, sentence, onSubmit, onClick, safeNext, renderState, busy, poller,
  when,
};

// Every page --------------------------------------------------------------------------

document.getElementById("sign-out")?.addEventListener("click", async (event) => {
  event.currentTarget.disabled = true;
  try {
    await api("accounts/sign-out");
  } catch {
    // Signed out already, or the hub is unreachable: the sign-in page says which.
  }
  window.location.assign(`${BASE}/auth/sign-in`);
});

const pageModule = body.dataset.module;
if (pageModule) {
  import(`./${pageModule}${VERSION}`).then((mod) => mod.init(body.dataset.page, ui)).catch((e) => {
    const main = document.getElementById("main");
    main.prepend(el("p", { class: "error", role: "alert" }, `This page could not start: ${e.message}`));
  });
}
