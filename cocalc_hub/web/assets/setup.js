// The first-administrator page. The one-time token travels in the URL's fragment
// (#token=…), which browsers never send to a server, so it stays out of access logs and
// Referer headers; this module hands it to auth/setup-admin in a POST body.

function tokenFromFragment() {
  return new URLSearchParams(window.location.hash.replace(/^#/, "")).get("token") || "";
}

export async function init(page, ui) {
  // A new link pasted into this tab only changes the fragment: start over with it.
  window.addEventListener("hashchange", () => window.location.reload());
  const status = document.getElementById("setup-status");
  const token = tokenFromFragment();
  // Forget the token in the address bar and history; the page keeps it in memory.
  if (token) history.replaceState(null, "", window.location.pathname + window.location.search);
  let info;
  try {
    info = await ui.api("auth/setup-admin", { token, check: true });
  } catch (e) {
    status.className = "error";
    ui.show(status, e.message);
    return;
  }
  ui.hide(status);
  const form = document.getElementById(info.signed_in ? "setup-self-form" : "setup-form");
  form.hidden = false;
  ui.onSubmit(form, async (values) => {
    const params = { token };
    if (!info.signed_in) {
      Object.assign(params, {
        email: values.email.trim(), password: values.password,
        firstName: values.firstName.trim(), lastName: values.lastName.trim(),
      });
    }
    await ui.api("auth/setup-admin", params);
    window.location.assign(`${ui.BASE}/admin`);
  });
}
