// The owner's dashboard: the sandbox's state, live; its controls (open the terminal, stop,
// restart, reset); how to connect; the access ledger; the timeline; the idle period.
//
// Everything comes from the JSON API (GET /api/sandbox/dashboard, /access, /timeline), read
// again whenever live.js says the sandbox changed (pushed over a websocket, or polled). Times are
// measured by the server's clock ("now" of the dashboard) and shown in the browser's time zone.

import { setUpAccess } from "./dashboard-access.js";
import { setUpApp } from "./dashboard-app.js";
import { setUpPreferences } from "./dashboard-preferences.js";
import { setUpUsage } from "./dashboard-usage.js";
import { watchSandbox } from "./live.js";
import { startPresence } from "./presence.js";
import {
  LaunchError,
  SignInRequired,
  callApi,
  coalesced,
  launchSandbox,
  waitUntilSettled,
} from "./sandbox-api.js";
import {
  ServerClock,
  formatClockTime,
  formatDateTime,
  formatDuration,
  parseTime,
  setTime,
} from "./server-time.js";
import { createStopWarning } from "./stop-warning.js";

const ACTION_TIMEOUT_MS = 5 * 60 * 1000;
const CLOCK_TICK_MS = 15 * 1000;
const UNEXPECTED_ERROR_MESSAGE = "Something went wrong on this page. Reload it and try again.";
const MESSAGES = {
  tooSlow:
    "Your sandbox is taking longer than usual. Try again in a minute; " +
    "if it keeps happening, contact support.",
  byStatus: {
    403: "Your session has expired. Reload the page and try again.",
    429: "Too many launches in a short time.",
    503: "The sandbox service is unavailable right now.",
  },
};

const STATES = {
  pending: { text: "Not created yet", tone: "stopped" },
  creating: { text: "Creating…", tone: "busy" },
  starting: { text: "Starting…", tone: "busy" },
  started: { text: "Running", tone: "ok" },
  stopping: { text: "Stopping…", tone: "busy" },
  stopped: { text: "Stopped", tone: "stopped" },
  archived: { text: "Stopped (archived)", tone: "stopped" },
  error: { text: "Error", tone: "error" },
  gone: { text: "Gone: opening it creates a new one", tone: "stopped" },
  unknown: { text: "Unknown", tone: "stopped" },
};
const TRANSITIONS = new Set(["creating", "starting", "stopping"]);

const root = document.getElementById("dashboard");

if (root) {
  setUpDashboard();
}

function setUpDashboard() {
  const byId = (id) => document.getElementById(id);
  const data = root.dataset;
  const csrfToken = document.querySelector('meta[name="csrf-token"]').content;
  const clock = new ServerClock();
  const launchUrls = { create: data.createUrl, status: data.statusUrl };

  const stateBadge = byId("state-badge");
  const stateText = byId("state-text");
  const errorBox = byId("dashboard-error");
  const errorMessage = byId("dashboard-error-message");
  const actionStatus = byId("action-status");
  const controls = {
    terminal: byId("open-terminal"),
    stop: byId("stop-now"),
    restart: byId("restart"),
    reset: byId("reset"),
  };

  let dashboard = null;
  let busy = false;
  let loadFailed = false;
  // Reads the dashboard, its ledger and timeline; calls made while one runs are folded into
  // one more read after it.
  const refresh = coalesced(load);

  const page = { csrfToken, clock, refresh, showError, signIn, messageOf, urls: data };
  const warning = createStopWarning({
    element: byId("stop-warning"),
    clock,
    csrfToken,
    onExtended: refresh,
    returnFocus: () => controls.terminal.focus(),
  });
  const access = setUpAccess(page);
  const preferences = setUpPreferences(page);
  const usage = setUpUsage(page);
  const app = setUpApp(page);
  setUpReset();

  controls.terminal.addEventListener("click", openTerminal);
  controls.stop.addEventListener("click", stop);
  controls.restart.addEventListener("click", restart);
  window.setInterval(renderTimes, CLOCK_TICK_MS);

  refresh().then(() => {
    if (!dashboard) return;
    watchSandbox({
      websocketUrl: dashboard.live?.websocketUrl ?? null,
      pollSeconds: dashboard.live?.pollSeconds ?? 2,
      onChange: refresh,
    });
    startPresence({ url: data.heartbeatUrl, csrfToken });
    preferences.load(dashboard.idle);
  });

  // -- reading the dashboard -------------------------------------------------------------

  async function load() {
    const [main, ledger, timeline] = await Promise.all([
      read(data.dashboardUrl),
      read(data.accessUrl),
      read(data.timelineUrl),
    ]);
    if (main.status === 401) return signIn();
    if (main.status === 404) {
      window.location.assign("/sandbox-portal/");
      return;
    }
    const failed = [main, ledger, timeline].find((response) => response.status !== 200);
    if (failed) {
      loadFailed = true;
      showError(messageOf(failed));
    } else if (loadFailed) {
      loadFailed = false;
      hideError();
    }
    if (main.status !== 200) return;
    dashboard = main.body;
    clock.sync(dashboard.now);
    renderStatus();
    warning.update(dashboard);
    usage.update(dashboard);
    app.update(dashboard);
    access.render(dashboard, ledger.status === 200 ? ledger.body.entries : null);
    if (timeline.status === 200) renderTimeline(timeline.body.entries ?? []);
  }

  async function read(url) {
    try {
      return await callApi("GET", url);
    } catch (error) {
      return { status: 0, body: null, message: error.message };
    }
  }

  // -- status ----------------------------------------------------------------------------

  function renderStatus() {
    const sandbox = dashboard.sandbox;
    const state = STATES[sandbox.state] ?? STATES.unknown;
    if (stateText.textContent !== state.text) stateText.textContent = state.text;
    stateBadge.dataset.tone = state.tone;
    root.dataset.state = sandbox.state;
    const resources = sandbox.resources;
    byId("fact-resources").textContent =
      `${resources.cpu} vCPU · ${resources.memoryGb} GB RAM · ${resources.diskGb} GB disk`;
    renderTimes();
    const running = sandbox.state === "started";
    const settling = TRANSITIONS.has(sandbox.state);
    controls.restart.disabled = settling;
    controls.reset.disabled = settling;
    // A focused button that turns disabled would drop the keyboard's place on the page.
    const focused = document.activeElement;
    controls.stop.disabled = !running;
    if (focused?.disabled) (settling ? controls.terminal : controls.restart).focus();
  }

  function renderTimes() {
    if (!dashboard) return;
    const sandbox = dashboard.sandbox;
    const now = clock.now();
    const running = sandbox.state === "started";
    const startedAt = parseTime(sandbox.lastStartedAt);
    setTime(byId("fact-started"), startedAt, startedAt === null ? "–" : formatDateTime(startedAt));
    byId("fact-running-for-row").hidden = !(running && startedAt !== null);
    if (running && startedAt !== null) byId("fact-running-for").textContent = formatDuration(now - startedAt);

    const stopAt = parseTime(sandbox.idleStopAt);
    const stoppedAt = parseTime(sandbox.lastStoppedAt);
    const showStop = running && stopAt !== null;
    const showStopped = !running && !TRANSITIONS.has(sandbox.state) && stoppedAt !== null;
    byId("idle-running").hidden = !showStop;
    byId("idle-stopped").hidden = !showStopped;
    byId("idle-other").hidden = showStop || showStopped;
    if (showStop) setTime(byId("idle-stop-time"), stopAt, formatClockTime(stopAt, now));
    if (showStopped) setTime(byId("stopped-time"), stoppedAt, formatClockTime(stoppedAt, now));
  }

  function renderTimeline(entries) {
    const list = byId("timeline");
    byId("timeline-empty").hidden = entries.length > 0;
    list.replaceChildren(
      ...entries.map((entry) => {
        const item = document.createElement("li");
        item.className = "timeline__entry";
        item.dataset.kind = entry.kind ?? "";
        const at = parseTime(entry.at);
        const time = document.createElement("time");
        time.className = "timeline__time";
        setTime(time, at, at === null ? "" : formatDateTime(at));
        const text = document.createElement("span");
        text.className = "timeline__text";
        text.textContent = entry.text ?? "";
        const actor = document.createElement("span");
        actor.className = "badge timeline__actor";
        actor.textContent = entry.actor ?? "";
        item.append(time, text, actor);
        return item;
      }),
    );
  }

  // -- controls --------------------------------------------------------------------------

  async function openTerminal() {
    await act(async () => {
      let url = dashboard?.sandbox?.state === "started" ? dashboard?.access?.terminal?.url : null;
      if (!url) {
        setActionStatus("Starting your sandbox…");
        const body = await launchSandbox({
          urls: launchUrls,
          csrfToken,
          deadline: Date.now() + ACTION_TIMEOUT_MS,
          messages: MESSAGES,
          onState: showTransition,
          onRetry: waitToRetry,
        });
        url = body?.access?.terminal?.url;
      }
      if (!url) throw new LaunchError("Your sandbox has no terminal link yet. Try again.");
      setActionStatus("Opening the terminal…");
      window.location.assign(url);
    });
  }

  async function stop() {
    await act(async () => {
      setActionStatus("Stopping your sandbox…");
      const response = await post(data.stopUrl);
      if (response.status !== 200) throw new LaunchError(messageOf(response));
      setActionStatus("Your sandbox is stopped. Your files are kept.");
    });
  }

  async function restart() {
    await act(async () => {
      setActionStatus("Restarting your sandbox…");
      await settle(await post(data.restartUrl));
      setActionStatus("Your sandbox was restarted.");
    });
  }

  // Waits out a 202 (or a conflict while a transition runs) of restart or reset.
  async function settle(response) {
    if (response.status === 401) throw new SignInRequired();
    if (response.status === 202 || response.body?.error?.code === "conflict") {
      const state = await waitUntilSettled({
        urls: launchUrls,
        deadline: Date.now() + ACTION_TIMEOUT_MS,
        messages: MESSAGES,
        onState: showTransition,
        response,
      });
      if (state !== "started") throw new LaunchError(`Your sandbox did not start (it is ${state}). Try again.`);
      return;
    }
    if (response.status !== 200) throw new LaunchError(messageOf(response));
  }

  function setUpReset() {
    const dialog = byId("reset-dialog");
    const form = byId("reset-form");
    const input = byId("reset-confirm");
    const submit = byId("reset-submit");
    const error = byId("reset-error");
    const name = data.sandboxName;

    controls.reset.addEventListener("click", () => {
      input.value = "";
      submit.disabled = true;
      error.hidden = true;
      dialog.showModal();
      input.focus();
    });
    byId("reset-cancel").addEventListener("click", () => dialog.close());
    dialog.addEventListener("close", () => controls.reset.focus());
    input.addEventListener("input", () => {
      submit.disabled = input.value.trim() !== name;
    });
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      if (input.value.trim() !== name || submit.getAttribute("aria-disabled") === "true") return;
      submit.setAttribute("aria-disabled", "true");
      error.hidden = true;
      try {
        const response = await post(data.resetUrl, { confirm: input.value.trim() });
        if (response.status === 400) {
          error.textContent = messageOf(response);
          error.hidden = false;
          return;
        }
        dialog.close();
        await act(async () => {
          setActionStatus("Resetting your sandbox: a new one with fresh files is on its way…");
          await settle(response);
          setActionStatus("Your sandbox was reset.");
        });
      } catch (failure) {
        error.textContent = failure.message || UNEXPECTED_ERROR_MESSAGE;
        error.hidden = false;
      } finally {
        submit.removeAttribute("aria-disabled");
      }
    });
  }

  // Runs one control's action: one at a time, errors shown in the page, the dashboard read after.
  async function act(action) {
    if (busy) return;
    busy = true;
    hideError();
    for (const button of Object.values(controls)) button.setAttribute("aria-disabled", "true");
    try {
      await action();
    } catch (error) {
      if (error instanceof SignInRequired) {
        signIn();
        return;
      }
      setActionStatus("");
      showError(error instanceof LaunchError ? error.message : UNEXPECTED_ERROR_MESSAGE);
      if (!(error instanceof LaunchError)) throw error;
    } finally {
      busy = false;
      for (const button of Object.values(controls)) button.removeAttribute("aria-disabled");
      await refresh();
    }
  }

  async function post(url, payload = {}) {
    const response = await callApi("POST", url, csrfToken, payload);
    if (response.status === 401) throw new SignInRequired();
    return response;
  }

  function showTransition(state) {
    setActionStatus((STATES[state] ?? STATES.unknown).text);
  }

  function waitToRetry({ message, seconds }) {
    setActionStatus(`${message} Trying again in ${seconds} s…`);
    return new Promise((resolve) => window.setTimeout(resolve, seconds * 1000));
  }

  // -- page bits -------------------------------------------------------------------------

  function setActionStatus(text) {
    actionStatus.textContent = text;
  }

  function showError(message) {
    errorMessage.textContent = message;
    errorBox.hidden = false;
  }

  function hideError() {
    errorBox.hidden = true;
    errorMessage.textContent = "";
  }

  function signIn() {
    window.location.assign(data.loginUrl);
  }
}

// The API's error message of a failed call, or a plain one.
function messageOf(response) {
  if (response.status === 0) return response.message ?? UNEXPECTED_ERROR_MESSAGE;
  return response.body?.error?.message ?? `Something went wrong (HTTP ${response.status}). Try again.`;
}
