// The projects dashboard and a project's own page. State is polled (see poller in app.js):
// the list or the one project every 5 s, every second while something starts or stops.

const byTitle = (a, b) => (a.title || "").localeCompare(b.title || "") || a.project_id.localeCompare(b.project_id);

// Dashboard -------------------------------------------------------------------------------

function collaborators(ui, card, projectId) {
  const list = card.querySelector(".collabs");
  const error = card.querySelector(".collab-error");
  async function load() {
    const people = await ui.api("projects/collaborators/list", { project_id: projectId }, { get: true });
    list.replaceChildren(...people.map((p) => {
      const name = `${p.first_name || ""} ${p.last_name || ""}`.trim() || "(no name)";
      const item = ui.el("li", {}, name, p.email_address ? ` <${p.email_address}>` : "", ` — ${p.group}`);
      if (p.group !== "owner") {
        const remove = ui.el("button", { type: "button", class: "small", "aria-label": `Remove ${name}` }, "Remove");
        ui.onClick(remove, error, async () => {
          await ui.api("projects/collaborators/remove", { project_id: projectId, account_id: p.account_id });
          await load();
        });
        item.append(" ", remove);
      }
      return item;
    }));
  }
  card.querySelector("details").addEventListener("toggle", (event) => {
    if (event.currentTarget.open) load().catch((e) => ui.showError(error, e.message));
  });
  ui.onSubmit(card.querySelector(".add-collab"), async (values) => {
    await ui.api("projects/collaborators/add", { project_id: projectId, email: values.email.trim() });
    card.querySelector(".add-collab").reset();
    await load();
  });
}

function makeCard(ui, project, refresh) {
  const template = document.getElementById("project-card");
  const card = template.content.firstElementChild.cloneNode(true);
  const id = project.project_id;
  card.dataset.projectId = id;
  const link = card.querySelector(".p-title");
  link.href = `${ui.BASE}/projects/${id}`;
  const error = card.querySelector(".control-error");
  const buttons = [...card.querySelectorAll(".actions button")];
  for (const button of buttons) {
    ui.onClick(button, error, async () => {
      ui.renderState(card.querySelector(".state"), buttons, { state: button.dataset.act === "stop" ? "stopping" : "starting" });
      refresh.soon();
      try {
        await ui.api(`projects/${button.dataset.act}`, { project_id: id });
      } finally {
        refresh.soon();
      }
    });
  }
  ui.onSubmit(card.querySelector(".rename"), async (values) => {
    await ui.api("projects/update", { project_id: id, title: values.title.trim() });
    refresh.soon();
  });
  ui.onClick(card.querySelector('[data-act="delete"]'), card.querySelector(".delete-error"), async () => {
    // eslint-disable-next-line no-alert
    if (!window.confirm(`Delete the project “${link.textContent}”? Its files stay on the server.`)) return;
    await ui.api("projects/delete", { project_id: id });
    card.remove();
    refresh.soon();
  });
  collaborators(ui, card, id);
  return card;
}

function dashboard(ui) {
  const list = document.getElementById("projects");
  const status = document.getElementById("projects-status");
  const cards = new Map();
  const refresh = ui.poller(async () => {
    let projects;
    try {
      projects = await ui.api("projects/get", {}, { get: true });
    } catch (e) {
      ui.show(status, e.message);
      status.className = "error";
      throw e;
    }
    status.className = "muted";
    if (projects.length) ui.hide(status);
    else ui.show(status, "You have no projects yet. Create one above.");
    projects.sort(byTitle);
    const seen = new Set();
    let changing = false;
    for (const project of projects) {
      seen.add(project.project_id);
      let card = cards.get(project.project_id);
      if (!card) {
        card = makeCard(ui, project, refresh);
        cards.set(project.project_id, card);
      }
      list.append(card); // keeps the sorted order; moving a node keeps its state
      const title = project.title || "Untitled project";
      card.querySelector(".p-title").textContent = title;
      // Shared with this account by someone else: marked, and only the owner may delete it.
      const shared = Boolean(project.group) && project.group !== "owner";
      card.querySelector(".shared").hidden = !shared;
      card.querySelector(".owner-only").hidden = shared;
      // The title field follows the project's title until the user edits it: a poll that lands
      // after they typed (focus may already be on the Rename button) must not put the old title back.
      const input = card.querySelector(".rename input");
      const synced = input.dataset.synced;
      if (document.activeElement !== input && (synced === undefined || input.value === synced)) {
        input.value = project.title || "";
      }
      input.dataset.synced = project.title || "";
      ui.renderState(card.querySelector(".state"), [...card.querySelectorAll(".actions button")], project.state);
      changing ||= ui.busy(project.state?.state);
    }
    for (const [id, card] of cards) {
      if (!seen.has(id)) {
        card.remove();
        cards.delete(id);
      }
    }
    return changing;
  });
  const form = document.getElementById("create-project");
  ui.onSubmit(form, async (values) => {
    await ui.api("projects/create", { title: values.title.trim() });
    form.reset();
    refresh.soon();
  });
}

// One project -------------------------------------------------------------------------------

function projectPage(ui) {
  const id = document.body.dataset.projectId;
  const badge = document.getElementById("project-state");
  const controlError = document.getElementById("control-error");
  const buttons = [...document.querySelectorAll(".actions button")];
  let current = "unknown";
  const files = fileList(ui, id, () => current);
  const commands = runCommand(ui, id, () => current);
  const refresh = ui.poller(async () => {
    const state = await ui.api("projects/state", { project_id: id }, { get: true });
    const before = current;
    current = state.state || "opened";
    ui.renderState(badge, buttons, state);
    if (current === "running" && before !== "running") files.load();
    if (current !== "running" && before !== current) files.idle();
    if (before === "unknown") commands.resume();
    return ui.busy(current);
  });
  for (const button of buttons) {
    ui.onClick(button, controlError, async () => {
      current = button.dataset.act === "stop" ? "stopping" : "starting";
      ui.renderState(badge, buttons, { state: current });
      refresh.soon();
      try {
        await ui.api(`projects/${button.dataset.act}`, { project_id: id });
      } finally {
        refresh.soon();
      }
    });
  }
  openPort(ui, id);
}

function fileList(ui, id, state) {
  const list = document.getElementById("files");
  const status = document.getElementById("files-status");
  const raw = `${ui.BASE}/${id}/raw/`;
  let generation = 0; // a listing that ends after the project stopped (or a newer one began) is dropped
  async function load() {
    if (state() !== "running") {
      idle();
      return;
    }
    const mine = ++generation;
    ui.show(status, "Loading the file list…");
    try {
      // Only while running: exec would otherwise start the project.
      const result = await ui.api("exec", { project_id: id, command: "ls", args: ["-1p"], timeout: 10 });
      if (mine !== generation) return;
      const names = result.stdout.split("\n").filter(Boolean).slice(0, 500);
      list.replaceChildren(...names.map((name) => ui.el("li", {},
        ui.el("a", { href: raw + name.split("/").map(encodeURIComponent).join("/") }, name))));
      if (names.length) ui.hide(status);
      else ui.show(status, "The home directory is empty.");
    } catch (e) {
      if (mine === generation) ui.show(status, e.message);
    }
  }
  function idle() {
    generation += 1;
    list.replaceChildren();
    ui.show(status, "Start the project to list its files.");
  }
  document.getElementById("files-refresh").addEventListener("click", load);
  return { load, idle };
}

function openPort(ui, id) {
  const form = document.getElementById("open-port");
  const input = document.getElementById("port-number");
  const links = document.getElementById("port-links");
  const url = (via, port) => `${ui.BASE}/${id}/${via}/${port}/`;
  function update() {
    const port = Number(input.value);
    if (!input.value || !input.checkValidity()) {
      links.replaceChildren("Enter a port to see its two addresses.");
      return;
    }
    links.replaceChildren("Addresses: ",
      ui.el("a", { href: url("server", port) }, url("server", port)), " and ",
      ui.el("a", { href: url("port", port) }, url("port", port)));
  }
  input.addEventListener("input", update);
  ui.onSubmit(form, async (values, submitter) => {
    const via = submitter?.value === "port" ? "port" : "server";
    window.location.assign(url(via, Number(values.port)));
  });
}

function runCommand(ui, id, state) {
  const form = document.getElementById("exec-form");
  const output = document.getElementById("exec-output");
  const status = document.getElementById("exec-status");
  const stdout = document.getElementById("exec-stdout");
  const stderr = document.getElementById("exec-stderr");
  const key = `exec-job:${id}`;
  let watching = null;

  function render(job) {
    stdout.textContent = job.stdout || "";
    stderr.textContent = job.stderr || "";
    if (job.status === "running") {
      status.textContent = `Running (process ${job.pid}, ${Math.round(job.elapsed_s || 0)} s). Output so far:`;
    } else if (job.status === "completed") {
      status.textContent = `Finished with exit code ${job.exit_code}.`;
    } else {
      status.textContent = `Failed: ${job.error || job.status}.`;
    }
    if (job.truncated) status.textContent += " (Output was cut short.)";
  }

  async function watch(jobId) {
    watching = jobId;
    output.hidden = false;
    while (watching === jobId) {
      if (state() !== "running") {
        // Asking about the job would start a stopped project again.
        status.textContent = "The project is not running, so the command is not running either.";
        sessionStorage.removeItem(key);
        return;
      }
      let job;
      try {
        // Long poll: answers when the command ends, or after 2 s with the output so far.
        job = await ui.api("exec", { project_id: id, async_get: jobId, async_await: true, timeout: 2 });
      } catch (e) {
        status.textContent = e.message;
        sessionStorage.removeItem(key);
        return;
      }
      if (watching !== jobId) return;
      render(job);
      if (job.status !== "running") {
        sessionStorage.removeItem(key);
        return;
      }
      if (document.hidden) {
        await new Promise((resolve) => {
          document.addEventListener("visibilitychange", resolve, { once: true });
        });
      }
    }
  }

  ui.onSubmit(form, async (values) => {
    const job = await ui.api("exec", { project_id: id, command: values.command, bash: true, async_call: true });
    sessionStorage.setItem(key, job.job_id);
    render(job);
    watch(job.job_id);
  });
  return {
    /** Show again a command started before this page was reloaded (once the state is known). */
    resume() {
      const saved = sessionStorage.getItem(key);
      if (saved && watching === null) watch(saved);
    },
  };
}

export function init(page, ui) {
  if (page === "dashboard") dashboard(ui);
  else if (page === "project") projectPage(ui);
}
