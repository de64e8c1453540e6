// Sign in and sign up. After either, the browser goes to ``?next=`` if that is a path on
// this site (see safeNext), else to the projects dashboard.

function destination(ui) {
  const next = new URLSearchParams(window.location.search).get("next");
  return ui.safeNext(next) || `${ui.BASE}/`;
}

function signIn(ui) {
  ui.onSubmit(document.getElementById("sign-in-form"), async (values) => {
    await ui.api("auth/sign-in", { email: values.email.trim(), password: values.password });
    window.location.assign(destination(ui));
  });
}

async function signUp(ui) {
  const status = document.getElementById("signup-status");
  const form = document.getElementById("sign-up-form");
  const tokenField = document.getElementById("su-token-field");
  const token = document.getElementById("su-token");
  let mode;
  try {
    mode = await ui.api("auth/requires-token", {}, { get: true });
  } catch (e) {
    ui.show(status, e.message);
    status.className = "error";
    return;
  }
  if (mode.signup === "closed") {
    ui.show(status, "Sign-up is closed on this hub. Ask an administrator for an account.");
    return;
  }
  if (mode.requiresToken) {
    ui.show(status, "You need a registration token from an administrator to sign up.");
    tokenField.hidden = false;
    token.required = true;
    const given = new URLSearchParams(window.location.search).get("token");
    if (given) token.value = given;
  } else {
    ui.hide(status);
  }
  form.hidden = false;
  ui.onSubmit(form, async (values) => {
    const params = {
      email: values.email.trim(), password: values.password,
      firstName: values.firstName.trim(), lastName: values.lastName.trim(),
    };
    if (mode.requiresToken) params.registrationToken = values.registrationToken.trim();
    const made = await ui.api("auth/sign-up", params);
    if (!made.account_id) {
      // The hub does not say whether the email had an account (202): sign in with it.
      try {
        await ui.api("auth/sign-in", { email: params.email, password: params.password });
      } catch (e) {
        throw new Error(`${made.message} (${e.message})`);
      }
    }
    window.location.assign(destination(ui));
  });
}

export function init(page, ui) {
  if (page === "sign-in") signIn(ui);
  else if (page === "sign-up") signUp(ui);
}
