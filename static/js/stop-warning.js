// The warning before an idle stop, on the dashboard and the terminal page: from the sandbox's
// idleWarningAt on (by the server's clock), a banner says when it stops and offers to keep it
// running longer (POST extend {"minutes"}); it goes once the stop is out of the warning window.
//
// The page feeds it what GET /api/sandbox/dashboard answered (update()); watchStopWarning() is
// the whole loop for a page that shows nothing else of the dashboard.

import { watchSandbox } from "./live.js";
import { callApi } from "./sandbox-api.js";
import { ServerClock, formatClockTime, formatMinutes, parseTime, setTime } from "./server-time.js";

// The warning window opens while the page sits there: checked this often.
const CHECK_INTERVAL_MS = 5000;
const EXTEND_FAILED_MESSAGE = "Keeping your sandbox running failed. Try again.";

// element: the banner (templates/sandboxes/_stop_warning.html); clock: a ServerClock;
// onExtended(sandbox): after an extension; returnFocus(): where focus goes when the banner
// hides under it. Returns {update(dashboard)}.
export function createStopWarning({ element, clock, csrfToken, onExtended, returnFocus }) {
  const timeElement = element.querySelector(".stop-warning__time");
  const actions = element.querySelector(".stop-warning__actions");
  const errorElement = element.querySelector(".stop-warning__error");
  const announcer = document.getElementById("stop-warning-status");
  const extendUrl = element.dataset.extendUrl;
  let sandbox = null;
  let choices = "";
  let busy = false;

  window.setInterval(render, CHECK_INTERVAL_MS);

  function update({ sandbox: next, idle }) {
    sandbox = next ?? null;
    renderChoices(idle?.extendChoicesMinutes ?? []);
    render();
  }

  function render() {
    const warningAt = parseTime(sandbox?.idleWarningAt);
    const stopAt = parseTime(sandbox?.idleStopAt);
    const show = sandbox?.state === "started" && warningAt !== null && stopAt !== null && clock.now() >= warningAt;
    if (show) {
      setTime(timeElement, stopAt, formatClockTime(stopAt, clock.now()));
      element.hidden = false;
      return;
    }
    const hadFocus = element.contains(document.activeElement);
    element.hidden = true;
    errorElement.hidden = true;
    if (hadFocus) returnFocus?.();
  }

  function renderChoices(minutesList) {
    const key = minutesList.join(",");
    if (key === choices) return;
    choices = key;
    actions.replaceChildren(
      ...minutesList.map((minutes) => {
        const button = document.createElement("button");
        button.type = "button";
        button.className = "button button--secondary button--small";
        button.textContent = `+${formatMinutes(minutes)}`;
        button.addEventListener("click", () => extend(minutes, button));
        return button;
      }),
    );
  }

  async function extend(minutes, button) {
    if (busy) return;
    busy = true;
    button.setAttribute("aria-disabled", "true");
    errorElement.hidden = true;
    try {
      const response = await callApi("POST", extendUrl, csrfToken, { minutes });
      if (response.status !== 200) {
        showError(response.body?.error?.message ?? EXTEND_FAILED_MESSAGE);
        return;
      }
      sandbox = response.body.sandbox;
      const stopAt = parseTime(sandbox?.idleStopAt);
      if (announcer && stopAt !== null) {
        const at = formatClockTime(stopAt, clock.now());
        announcer.textContent = `Your sandbox now stops at ${at} unless you are active.`;
      }
      render();
      onExtended?.(sandbox);
    } catch (error) {
      showError(error.message || EXTEND_FAILED_MESSAGE);
    } finally {
      busy = false;
      button.removeAttribute("aria-disabled");
    }
  }

  function showError(message) {
    errorElement.textContent = message;
    errorElement.hidden = false;
  }

  return { update };
}

// The banner on a page that shows nothing else of the dashboard: reads the dashboard now and at
// every live change of the sandbox.
export async function watchStopWarning({ element, dashboardUrl, csrfToken, returnFocus }) {
  const clock = new ServerClock();
  const warning = createStopWarning({ element, clock, csrfToken, returnFocus, onExtended: refresh });

  async function refresh() {
    let response;
    try {
      response = await callApi("GET", dashboardUrl);
    } catch {
      return null; // offline for a moment: the next change or poll reads it again
    }
    if (response.status !== 200) return null;
    clock.sync(response.body.now);
    warning.update(response.body);
    return response.body;
  }

  const dashboard = await refresh();
  if (dashboard?.live) {
    watchSandbox({
      websocketUrl: dashboard.live.websocketUrl,
      pollSeconds: dashboard.live.pollSeconds,
      onChange: refresh,
    });
  }
}
