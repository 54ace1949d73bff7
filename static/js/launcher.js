// The portal's launcher: asks the API to create or resume the user's sandbox, follows it
// through its transition, shows the access details and then opens the terminal.
//
// The launch protocol lives in sandbox-api.js; once a sandbox is open, presence.js tells the
// portal every minute whether someone used the page (an untouched tab is not activity).

import { moneyFormat } from "./money.js";
import { startPresence } from "./presence.js";
import { LaunchError, SignInRequired, callApi, launchSandbox } from "./sandbox-api.js";

const LAUNCH_TIMEOUT_MS = 5 * 60 * 1000;
const REDIRECT_DELAY_SECONDS = 5;
const COPIED_FEEDBACK_MS = 2000;

const PROVISION_COPY = {
  creating: {
    label: "Creating your sandbox",
    status: "Creating your sandbox. The first launch takes a little longer.",
  },
  starting: {
    label: "Starting your sandbox",
    status: "Starting your sandbox. Your files are where you left them.",
  },
  stopping: {
    label: "Starting your sandbox",
    status: "Your sandbox is finishing a stop and starts again right after.",
  },
};

const STAGE_STATE_TEXT = {
  pending: "not started",
  active: "in progress",
  done: "done",
  failed: "failed",
};

const UNEXPECTED_ERROR_MESSAGE = "Something went wrong on this page. Reload it and try again.";
const LAUNCH_MESSAGES = {
  tooSlow:
    "Your sandbox is taking longer than usual to start. Try again in a minute; " +
    "if it keeps happening, contact support.",
  byStatus: {
    403: "Your session has expired. Reload the page and try again.",
    404: "Your sandbox could not be found. Try again to create a new one.",
    429: "Too many launches in a short time.",
    503: "The sandbox service is unavailable right now.",
  },
};

const launcher = document.getElementById("launcher");
const launchButton = document.getElementById("launch-button");

if (launcher && launchButton) {
  setUpLauncher();
}

function setUpLauncher() {
  const byId = (id) => document.getElementById(id);
  const urls = {
    create: launcher.dataset.createUrl,
    status: launcher.dataset.statusUrl,
    heartbeat: launcher.dataset.heartbeatUrl,
    login: launcher.dataset.loginUrl,
    reset: launcher.dataset.resetUrl,
  };
  const csrfToken = document.querySelector('meta[name="csrf-token"]').content;

  const progress = byId("launch-progress");
  const statusLine = byId("launch-status");
  const stages = new Map(
    [...progress.querySelectorAll("[data-stage]")].map((item) => [item.dataset.stage, item]),
  );
  const provisionLabel = stages.get("provision").querySelector(".stage__label");
  const errorBox = byId("launch-error");
  const errorMessage = byId("launch-error-message");
  const budgetDetail = byId("launch-error-budget");
  const retryCountdown = byId("retry-countdown");
  const retryButton = byId("retry-button");
  const accessPanel = byId("access-panel");
  const sshCommand = byId("ssh-command");
  const copyButton = byId("copy-ssh");
  const copyFeedback = byId("copy-ssh-feedback");
  const sshExpiry = byId("ssh-expiry");
  const previewLink = byId("preview-link");
  const terminalLink = byId("terminal-link");
  const redirectNotice = byId("redirect-notice");
  const redirectText = byId("redirect-text");
  const redirectCancelled = byId("redirect-cancelled");
  const redirectSeconds = byId("redirect-seconds");
  const cancelRedirectButton = byId("cancel-redirect");
  const accessTitle = byId("access-title");
  const sandboxName = byId("sandbox-name");
  const sandboxResources = byId("sandbox-resources");
  const previewPort = byId("preview-port");
  const templateChoice = byId("template-choice");
  const limitDetail = byId("launch-error-limit");
  const limitSandboxes = byId("limit-sandboxes");
  const limitReset = byId("limit-reset");
  const limitResetConfirm = byId("limit-reset-confirm");
  let limited = null; // the sandbox_limit refusal being shown: {template, sandboxes}

  let busy = false;
  let skipRetryWait = null;
  let redirectTimer = null;
  let stopPresence = null;
  let copyFeedbackTimer = null;

  launchButton.addEventListener("click", launch);
  launchButton.disabled = false; // rendered disabled: a click before this script runs would do nothing
  retryButton.addEventListener("click", () => (skipRetryWait ? skipRetryWait() : launch()));
  cancelRedirectButton.addEventListener("click", cancelRedirect);
  copyButton.addEventListener("click", copySshCommand);
  limitReset.addEventListener("submit", resetToChosen);

  const params = new URLSearchParams(window.location.search);
  if (params.has("launch")) {
    // Arriving from the sign-in page: launch once, and not again on reload. The server decides
    // (data-auto-launch): a link on another site to ?launch=1 only shows the button.
    params.delete("launch");
    const query = params.toString();
    window.history.replaceState(null, "", window.location.pathname + (query ? `?${query}` : ""));
    if (launcher.dataset.autoLaunch === "true") launch();
  }

  async function launch() {
    if (busy) return;
    busy = true;
    launchButton.setAttribute("aria-disabled", "true");
    cancelRedirect();
    hideError();
    accessPanel.hidden = true;
    resetStages();
    progress.hidden = false;
    try {
      showAccess(await runLaunch(Date.now() + LAUNCH_TIMEOUT_MS));
    } catch (error) {
      if (error instanceof SignInRequired) {
        setStatus("Your session has ended. Taking you to the sign-in page…");
        window.location.assign(urls.login);
        return;
      }
      failActiveStage();
      setStatus("");
      showError(error instanceof LaunchError ? error.message : UNEXPECTED_ERROR_MESSAGE);
      if (error instanceof LaunchError && error.error?.code === "budget_exceeded") {
        showBudget(error.error.budget);
      }
      if (error instanceof LaunchError && error.error?.code === "sandbox_limit") {
        showLimit(error.error);
      }
      (retryButton.hidden ? errorBox : retryButton).focus();
      if (!(error instanceof LaunchError)) throw error;
    } finally {
      busy = false;
      launchButton.removeAttribute("aria-disabled");
    }
  }

  // The template chosen on the page (none offered but the default: null, the server's default).
  function chosenTemplate() {
    return templateChoice?.querySelector("input[name=template]:checked")?.value ?? null;
  }

  function choose(slug) {
    const input = templateChoice?.querySelector(`input[name=template][value="${CSS.escape(slug)}"]`);
    if (input) input.checked = true;
  }

  // Resolves with the 200 body of POST create; throws LaunchError or SignInRequired.
  function runLaunch(deadline) {
    setStage("check", "active");
    setStatus("Checking your sandbox…");
    const template = chosenTemplate();
    const status = template ? `${urls.status}?template=${encodeURIComponent(template)}` : urls.status;
    return launchSandbox({
      urls: { ...urls, status },
      payload: template ? { template } : {},
      csrfToken,
      deadline,
      messages: LAUNCH_MESSAGES,
      onWaiting: () => setStage("check", "done"),
      onState: showProvisioning,
      onSettled: showSecuring,
      onRetry: waitToRetry,
    });
  }

  function showSecuring() {
    setStage("provision", "done");
    setStage("secure", "active");
    setStatus("Securing access…");
  }

  function showProvisioning(state) {
    const copy = PROVISION_COPY[state] ?? PROVISION_COPY.starting;
    provisionLabel.textContent = copy.label;
    setStage("provision", "active");
    setStatus(copy.status);
  }

  // Shows the server's message with a countdown; resolves when it runs out or on "Retry now".
  function waitToRetry({ message, seconds }) {
    let remaining = seconds;
    showError(message);
    retryButton.textContent = "Retry now";
    retryCountdown.hidden = false;
    const renderCountdown = () => {
      retryCountdown.textContent = `Retrying in ${remaining} s…`;
    };
    renderCountdown();
    return new Promise((resolve) => {
      const timer = window.setInterval(() => {
        remaining -= 1;
        if (remaining <= 0) finish();
        else renderCountdown();
      }, 1000);
      function finish() {
        window.clearInterval(timer);
        skipRetryWait = null;
        hideError();
        resolve();
      }
      skipRetryWait = finish;
    });
  }

  function showAccess(body) {
    const { sandbox, access } = body ?? {};
    for (const name of stages.keys()) setStage(name, "done");
    setStatus(""); // the access panel's heading says it from here on

    sandboxName.textContent = sandbox?.name ?? "";
    const resources = sandbox?.resources;
    sandboxResources.textContent = resources
      ? `${resources.cpu} vCPU · ${resources.memoryGb} GB RAM · ${resources.diskGb} GB disk`
      : "";

    sshCommand.textContent = access?.ssh?.command ?? "";
    copyFeedback.textContent = "";
    showExpiry(access?.ssh?.expiresAt);

    const previewUrl = httpUrl(access?.preview?.url);
    previewLink.hidden = !previewUrl;
    if (previewUrl) {
      previewLink.href = previewUrl.href;
      if (access.preview.port) previewPort.textContent = access.preview.port;
    }

    const terminalUrl = httpUrl(access?.terminal?.url);
    terminalLink.hidden = !terminalUrl;
    if (terminalUrl) terminalLink.href = terminalUrl.href;

    accessPanel.hidden = false;
    stopPresence ??= startPresence({ url: urls.heartbeat, csrfToken });
    if (terminalUrl) {
      scheduleRedirect(terminalUrl);
      cancelRedirectButton.focus();
    } else {
      redirectNotice.hidden = true;
      accessTitle.focus();
    }
  }

  function showExpiry(value) {
    const expiresAt = value ? new Date(value) : null;
    if (!expiresAt || Number.isNaN(expiresAt.getTime())) {
      sshExpiry.removeAttribute("datetime");
      sshExpiry.textContent = "unknown";
      return;
    }
    sshExpiry.dateTime = expiresAt.toISOString();
    sshExpiry.textContent = expiresAt.toLocaleString(undefined, {
      dateStyle: "medium",
      timeStyle: "short",
    });
  }

  function scheduleRedirect(url) {
    let remaining = REDIRECT_DELAY_SECONDS;
    redirectSeconds.textContent = remaining;
    redirectText.hidden = false;
    redirectCancelled.hidden = true;
    cancelRedirectButton.hidden = false;
    redirectNotice.hidden = false;
    redirectTimer = window.setInterval(() => {
      remaining -= 1;
      if (remaining > 0) {
        redirectSeconds.textContent = remaining;
        return;
      }
      window.clearInterval(redirectTimer);
      redirectTimer = null;
      window.location.assign(url.href);
    }, 1000);
  }

  function cancelRedirect() {
    if (redirectTimer === null) return;
    window.clearInterval(redirectTimer);
    redirectTimer = null;
    redirectText.hidden = true;
    redirectCancelled.hidden = false;
    const hadFocus = document.activeElement === cancelRedirectButton;
    cancelRedirectButton.hidden = true;
    if (hadFocus) terminalLink.focus();
  }

  async function copySshCommand() {
    const command = sshCommand.textContent;
    try {
      await navigator.clipboard.writeText(command);
      showCopyFeedback("Copied", "SSH command copied to the clipboard.");
    } catch {
      // No clipboard access (insecure origin or permission denied): select it for Ctrl+C.
      const range = document.createRange();
      range.selectNodeContents(sshCommand);
      const selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      showCopyFeedback("Copy", "Selected. Press Ctrl+C (or ⌘C) to copy.");
    }
  }

  function showCopyFeedback(buttonText, note) {
    copyButton.textContent = buttonText;
    copyFeedback.textContent = note;
    window.clearTimeout(copyFeedbackTimer);
    copyFeedbackTimer = window.setTimeout(() => {
      copyButton.textContent = "Copy";
      copyFeedback.textContent = "";
    }, COPIED_FEEDBACK_MS);
  }

  function setStage(name, state) {
    const item = stages.get(name);
    item.dataset.state = state;
    item.querySelector(".stage__state").textContent = STAGE_STATE_TEXT[state];
    if (state === "active") item.setAttribute("aria-current", "step");
    else item.removeAttribute("aria-current");
  }

  function resetStages() {
    for (const name of stages.keys()) setStage(name, "pending");
    provisionLabel.textContent = PROVISION_COPY.starting.label;
  }

  function failActiveStage() {
    for (const [name, item] of stages) {
      if (item.dataset.state === "active") setStage(name, "failed");
    }
  }

  function setStatus(text) {
    statusLine.textContent = text;
  }

  function showError(message) {
    errorMessage.textContent = message;
    retryButton.textContent = "Try again";
    retryButton.hidden = false;
    retryCountdown.hidden = true;
    budgetDetail.hidden = true;
    errorBox.hidden = false;
  }

  // A used-up monthly limit: what was used of what and when it resets. Trying again before
  // then is refused the same way, so the retry button gives way to what to do instead.
  function showBudget(budget) {
    if (!budget) return;
    const isCost = budget.limit === "cost";
    const money = moneyFormat(budget.currency);
    const amount = (value) => (isCost ? money(value) : `${value} running hours`);
    byId("budget-used").textContent = amount(budget.used);
    byId("budget-allowed").textContent = amount(budget.allowed);
    byId("budget-limit-name").textContent = isCost ? "monthly budget" : "running-hours cap";
    const resets = byId("budget-resets");
    const resetsAt = new Date(budget.resetsAt);
    if (Number.isNaN(resetsAt.getTime())) {
      resets.removeAttribute("datetime");
      resets.textContent = "the start of next month";
    } else {
      resets.dateTime = resetsAt.toISOString();
      resets.textContent = resetsAt.toLocaleString(undefined, { dateStyle: "long", timeStyle: "short" });
    }
    budgetDetail.hidden = false;
    retryButton.hidden = true;
  }

  // At the cap: the user's sandboxes to open instead, and the reset of the first to the
  // chosen template behind its typed name (the server checks it again).
  function showLimit(error) {
    limited = error;
    limitSandboxes.replaceChildren(
      ...error.sandboxes.map((sandbox) => {
        const item = document.createElement("li");
        const open = document.createElement("button");
        open.type = "button";
        open.className = "button button--secondary button--small";
        open.textContent = `Open ${sandbox.templateName} (${sandbox.name})`;
        open.addEventListener("click", () => {
          choose(sandbox.template);
          launch();
        });
        item.append(open);
        return item;
      }),
    );
    const target = error.sandboxes[0];
    byId("limit-reset-name").textContent = target.name;
    byId("limit-reset-template").textContent =
      templateChoice?.querySelector(`input[value="${CSS.escape(error.template)}"]`)?.nextElementSibling
        ?.textContent ?? error.template;
    limitResetConfirm.value = "";
    limitDetail.hidden = false;
    retryButton.hidden = true;
  }

  async function resetToChosen(event) {
    event.preventDefault();
    if (busy || !limited) return;
    const target = limited.sandboxes[0];
    const payload = { template: target.template, newTemplate: limited.template, confirm: limitResetConfirm.value };
    busy = true;
    hideError();
    resetStages();
    progress.hidden = false;
    try {
      // Reset once; what follows is the launch of the new sandbox (never a second reset).
      setStage("check", "active");
      setStatus("Deleting your sandbox and making the new one…");
      const response = await callApi("POST", urls.reset, csrfToken, payload);
      if (response.status === 200) {
        showAccess(response.body);
        return;
      }
      if (response.status !== 202) {
        throw new LaunchError(response.body?.error?.message ?? UNEXPECTED_ERROR_MESSAGE, response.body?.error);
      }
      choose(limited.template);
      showAccess(await runLaunch(Date.now() + LAUNCH_TIMEOUT_MS));
    } catch (error) {
      failActiveStage();
      setStatus("");
      showError(error instanceof LaunchError ? error.message : UNEXPECTED_ERROR_MESSAGE);
      if (!(error instanceof LaunchError)) throw error;
    } finally {
      busy = false;
    }
  }

  function hideError() {
    limitDetail.hidden = true;
    errorBox.hidden = true;
    errorMessage.textContent = "";
    retryCountdown.textContent = "";
    budgetDetail.hidden = true;
  }
}

// Only http(s) URLs that came from the server are ever followed or linked.
function httpUrl(value) {
  if (typeof value !== "string") return null;
  try {
    const url = new URL(value, window.location.href);
    return url.protocol === "http:" || url.protocol === "https:" ? url : null;
  } catch {
    return null;
  }
}
