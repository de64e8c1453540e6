// The account page (profile, password, API keys) and the admin page.

function dateOnly(iso) {
  return iso ? new Date(iso).toLocaleDateString() : "never";
}

// Account ------------------------------------------------------------------------------

async function profile(ui) {
  const dl = document.getElementById("profile");
  try {
    const me = await ui.api("accounts/profile", {}, { get: true });
    const name = `${me.first_name || ""} ${me.last_name || ""}`.trim() || "(none)";
    const rows = [["Email", me.email_address], ["Name", name], ["Member since", dateOnly(me.created)]];
    if (me.is_admin) rows.push(["Role", "Administrator"]);
    dl.replaceChildren(...rows.flatMap(([k, v]) => [ui.el("dt", {}, k), ui.el("dd", {}, v || "")]));
  } catch (e) {
    dl.replaceChildren(ui.el("dd", { class: "error" }, e.message));
  }
}

function password(ui) {
  const form = document.getElementById("password-form");
  ui.onSubmit(form, async (values) => {
    if (values.newPassword !== values.again) throw new Error("the two new passwords are not the same");
    const result = await ui.api("accounts/set-password", {
      currentPassword: values.currentPassword, newPassword: values.newPassword,
    });
    form.reset();
    const others = result.revoked_sessions;
    return `Your password was changed${others ? `; ${others} other session(s) were signed out` : ""}.`;
  });
}

function apiKeys(ui) {
  const tbody = document.getElementById("keys");
  const error = document.getElementById("keys-error");
  const fresh = document.getElementById("new-key");
  async function load() {
    const keys = (await ui.api("api-keys", { action: "get" })).response;
    if (!keys.length) {
      tbody.replaceChildren(ui.el("tr", {}, ui.el("td", { colspan: "5", class: "muted" }, "No API keys.")));
      return;
    }
    tbody.replaceChildren(...keys.map((key) => {
      const remove = ui.el("button", { type: "button", class: "small danger", "aria-label": `Delete key ${key.name}` },
        "Delete");
      ui.onClick(remove, error, async () => {
        if (!window.confirm(`Delete the API key “${key.name}”? Scripts using it stop working.`)) return;
        await ui.api("api-keys", { action: "delete", id: key.id });
        await load();
      });
      const scope = key.project_id ? ` (project ${key.project_id.slice(0, 8)})` : "";
      return ui.el("tr", {}, ui.el("td", {}, key.name + scope), ui.el("td", {}, ui.el("code", {}, key.trunc)),
        ui.el("td", {}, key.expire ? dateOnly(key.expire) : "never"), ui.el("td", {}, ui.when(key.last_active)),
        ui.el("td", {}, remove));
    }));
  }
  const form = document.getElementById("key-form");
  ui.onSubmit(form, async (values) => {
    const params = { action: "create", name: values.name.trim() };
    if (values.expire) params.expire = new Date(`${values.expire}T23:59:59`).toISOString();
    const key = (await ui.api("api-keys", params)).response;
    form.reset();
    ui.show(fresh, "");
    fresh.append("New key “", key.name, "” (copy it now; it is not shown again): ", ui.el("code", {}, key.secret));
    await load();
  });
  load().catch((e) => ui.showError(error, e.message));
}

// Admin --------------------------------------------------------------------------------------

const SIGNUP_WORDS = {
  open: "Sign-up is open.", closed: "Sign-up is closed.", token: "Sign-up needs a registration token.",
};

async function adminSettings(ui) {
  const form = document.getElementById("settings-form");
  const tokens = document.getElementById("tokens");
  const mode = document.getElementById("signup-mode");
  let saved = {};
  async function load() {
    const data = await ui.api("admin/settings", {}, { get: true });
    saved = data.settings;
    for (const name of data.editable) {
      if (form.elements[name] && saved[name] != null) form.elements[name].value = saved[name];
    }
    mode.textContent = SIGNUP_WORDS[data.signup] || `Sign-up: ${data.signup}.`;
    tokens.replaceChildren(...data.registration_tokens.map((t) => ui.el("li", {}, ui.el("code", {}, t.token),
      ` — used ${t.counter}${t.limit != null ? ` of ${t.limit}` : ""} time(s)`,
      t.expires ? `, expires ${dateOnly(t.expires)}` : "", t.disabled ? " (disabled)" : "")));
  }
  ui.onSubmit(form, async (values) => {
    for (const [name, value] of Object.entries(values)) {
      if (saved[name] !== value) await ui.api("admin/set-setting", { name, value });
    }
    await load();
    return "Settings saved.";
  });
  const tokenForm = document.getElementById("token-form");
  ui.onSubmit(tokenForm, async (values) => {
    const params = {};
    if (values.token.trim()) params.token = values.token.trim();
    if (values.limit) params.limit = Number(values.limit);
    await ui.api("admin/create-registration-token", params);
    tokenForm.reset();
    await load();
  });
  await load().catch((e) => ui.showError(form.querySelector(".error"), e.message));
}

async function adminAccounts(ui, error) {
  const tbody = document.getElementById("accounts");
  const accounts = await ui.api("admin/accounts", { limit: 1000 }, { get: true });
  tbody.replaceChildren(...accounts.map((a) => {
    const name = `${a.first_name || ""} ${a.last_name || ""}`.trim();
    const roles = [a.is_admin ? "admin" : "user", a.banned ? "banned" : ""].filter(Boolean).join(", ");
    const admin = ui.el("button", { type: "button", class: "small" }, a.is_admin ? "Remove admin" : "Make admin");
    const ban = ui.el("button", { type: "button", class: "small danger" }, a.banned ? "Unban" : "Ban");
    ui.onClick(admin, error, async () => {
      await ui.api("admin/set-admin", { account_id: a.account_id, admin: !a.is_admin });
      await adminAccounts(ui, error);
    });
    ui.onClick(ban, error, async () => {
      await ui.api("admin/ban", { account_id: a.account_id, banned: !a.banned });
      await adminAccounts(ui, error);
    });
    admin.setAttribute("aria-label", `${admin.textContent}: ${a.email_address}`);
    ban.setAttribute("aria-label", `${ban.textContent}: ${a.email_address}`);
    // data-label: the column's name, shown before each cell where rows stack (narrow screens).
    return ui.el("tr", {}, ui.el("td", { "data-label": "Email" }, a.email_address || ""),
      ui.el("td", { "data-label": "Name" }, name), ui.el("td", { "data-label": "Created" }, dateOnly(a.created)),
      ui.el("td", { "data-label": "Status" }, roles), ui.el("td", { class: "actions" }, admin, " ", ban));
  }));
}

async function adminProjects(ui) {
  const tbody = document.getElementById("all-projects");
  const projects = await ui.api("admin/projects", { limit: 1000 }, { get: true });
  tbody.replaceChildren(...projects.map((p) => ui.el("tr", {},
    ui.el("td", {}, ui.el("a", { href: `${ui.BASE}/projects/${p.project_id}` }, p.title || "Untitled project"),
      p.deleted ? " (deleted)" : ""),
    ui.el("td", { "data-label": "State" }, p.state?.state || "opened"),
    ui.el("td", { "data-label": "Members" }, String(Object.keys(p.users || {}).length)),
    ui.el("td", { "data-label": "Created" }, dateOnly(p.created)))));
}

function admin(ui) {
  // Each section reports its own errors, next to what failed.
  adminSettings(ui);
  const accountsError = document.getElementById("accounts-error");
  adminAccounts(ui, accountsError).catch((e) => ui.showError(accountsError, e.message));
  const projectsError = document.getElementById("aprojects-error");
  adminProjects(ui).catch((e) => ui.showError(projectsError, e.message));
}

export function init(page, ui) {
  if (page === "settings") {
    profile(ui);
    password(ui);
    apiKeys(ui);
  } else if (page === "admin") {
    admin(ui);
  }
}
