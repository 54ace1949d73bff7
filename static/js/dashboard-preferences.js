// The dashboard's "My idle period" form: how long the sandbox may sit unused before it stops
// (within the deployment's bounds), and whether to be emailed before an idle stop.
// GET and PUT /api/sandbox/preferences.

import { SignInRequired, callApi } from "./sandbox-api.js";
import { formatMinutes } from "./server-time.js";

// What the menu offers, of what the deployment allows.
const CHOICES_MINUTES = [15, 30, 60, 120, 240, 480];
const DEFAULT_VALUE = "";

// page: {csrfToken, refresh(), signIn(), messageOf(response), urls}. Returns {load(idle)}, idle
// being the dashboard's bounds ({minMinutes, maxMinutes, defaultMinutes}).
export function setUpPreferences(page) {
  const byId = (id) => document.getElementById(id);
  const form = byId("preferences-form");
  const select = byId("idle-minutes");
  const help = byId("idle-minutes-help");
  const email = byId("email-before-stop");
  const submit = byId("save-preferences");
  const error = byId("preferences-error");
  const status = byId("preferences-status");
  const url = page.urls.preferencesUrl;

  form.addEventListener("submit", save);
  select.addEventListener("change", clearError);

  async function load(idle) {
    let response;
    try {
      response = await callApi("GET", url);
    } catch (failure) {
      showError(failure.message);
      return;
    }
    if (response.status === 401) return page.signIn();
    if (response.status !== 200) return showError(page.messageOf(response));
    fill({ ...idle, ...response.body });
  }

  // preferences: {idleMinutes, emailBeforeStop, minMinutes, maxMinutes, defaultMinutes}.
  function fill(preferences) {
    const { idleMinutes, emailBeforeStop, minMinutes, maxMinutes, defaultMinutes } = preferences;
    const minutes = CHOICES_MINUTES.filter((value) => value >= minMinutes && value <= maxMinutes);
    if (idleMinutes && !minutes.includes(idleMinutes)) minutes.push(idleMinutes);
    minutes.sort((a, b) => a - b);
    select.replaceChildren(
      option(DEFAULT_VALUE, `The default (${formatMinutes(defaultMinutes)})`),
      ...minutes.map((value) => option(String(value), formatMinutes(value))),
    );
    select.value = idleMinutes ? String(idleMinutes) : DEFAULT_VALUE;
    email.checked = Boolean(emailBeforeStop);
    help.textContent = `Between ${formatMinutes(minMinutes)} and ${formatMinutes(maxMinutes)}.`;
  }

  async function save(event) {
    event.preventDefault();
    if (submit.getAttribute("aria-disabled") === "true") return;
    submit.setAttribute("aria-disabled", "true");
    clearError();
    status.textContent = "";
    const idleMinutes = select.value === DEFAULT_VALUE ? null : Number(select.value);
    try {
      const response = await callApi("PUT", url, page.csrfToken, {
        idleMinutes,
        emailBeforeStop: email.checked,
      });
      if (response.status === 401) throw new SignInRequired();
      if (response.status !== 200) {
        showError(page.messageOf(response));
        if (response.status === 400) select.setAttribute("aria-invalid", "true");
        return;
      }
      fill(response.body);
      const period = response.body.idleMinutes ?? response.body.defaultMinutes;
      status.textContent = `Saved: your sandbox stops after ${formatMinutes(period)} without use.`;
      await page.refresh();
    } catch (failure) {
      if (failure instanceof SignInRequired) page.signIn();
      else showError(failure.message);
    } finally {
      submit.removeAttribute("aria-disabled");
    }
  }

  function showError(message) {
    error.textContent = message;
    error.hidden = false;
  }

  function clearError() {
    error.hidden = true;
    error.textContent = "";
    select.removeAttribute("aria-invalid");
  }

  return { load };
}

function option(value, text) {
  const element = document.createElement("option");
  element.value = value;
  element.textContent = text;
  return element;
}
