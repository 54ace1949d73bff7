// The client side of the sandbox API, shared by the portal's launcher and the terminal page.
//
// Protocol (JSON everywhere, errors as {"error": {"code", "message"}}):
//   POST create -> 200 {sandbox, access}: ready.
//               -> 202 {sandbox} or 409 "conflict": a transition is under way; poll GET status
//                  until the state settles, then POST create again to obtain access.
//               -> 401: signed out, go to the sign-in page.
//               -> 429 / 503: retry by itself after Retry-After seconds, except for errors that
//                  trying again cannot mend (FINAL_CODES), shown as they are.
//               -> any other 409: shown as it is (a name taken by someone else's sandbox...).
//
// Each page keeps its own UI and copy: it passes its messages and reacts through callbacks.

const POLL_INTERVAL_MS = 1500;
const DEFAULT_RETRY_SECONDS = 5;
const MAX_RETRY_SECONDS = 120;
// A conflict that outlives this many waits for the sandbox to settle is not a transition.
const MAX_CONFLICTS = 3;

// Remote states after which POST create decides what to do next (use, start or recover).
const SETTLED_STATES = new Set(["started", "stopped", "archived", "error"]);

const NETWORK_ERROR_MESSAGE = "We could not reach the portal. Check your connection and try again.";
// Failures an automatic retry would only repeat: an image that does not build.
const FINAL_CODES = new Set(["build_failed"]);

// `error` is the API's error object when the portal refused ({code, message, ...}), else null.
export class LaunchError extends Error {
  constructor(message, error = null) {
    super(message);
    this.error = error;
  }
}
export class SignInRequired extends Error {}

// Resolves with {status, body, retryAfterSeconds}; throws LaunchError when offline.
export async function callApi(method, url, csrfToken, payload = {}) {
  const init = {
    method,
    credentials: "same-origin",
    headers: { Accept: "application/json" },
  };
  if (method !== "GET" && method !== "HEAD") {
    init.headers["Content-Type"] = "application/json";
    init.headers["X-CSRFToken"] = csrfToken;
    init.body = JSON.stringify(payload);
  }
  let response;
  try {
    response = await fetch(url, init);
  } catch {
    throw new LaunchError(NETWORK_ERROR_MESSAGE);
  }
  const body = await response.json().catch(() => null);
  return {
    status: response.status,
    body,
    retryAfterSeconds: parseRetryAfter(response.headers.get("Retry-After")),
  };
}

// Retry-After is either delay-seconds or an HTTP date; the result is clamped to a sane range.
export function parseRetryAfter(value) {
  if (!value) return null;
  const seconds = /^\d+$/.test(value.trim())
    ? Number(value)
    : (Date.parse(value) - Date.now()) / 1000;
  if (Number.isNaN(seconds)) return null;
  return Math.min(Math.max(Math.ceil(seconds), 1), MAX_RETRY_SECONDS);
}

// POSTs create until it answers 200 and resolves with that body ({sandbox, access});
// throws LaunchError or SignInRequired. Options:
//   urls: {create, status}; csrfToken; deadline: a Date.now() value; payload: create's body
//   ({template} picks the sandbox; status is then that sandbox's);
//   messages: {tooSlow, byStatus: {status: fallback message}} (the page's copy);
//   onWaiting(): a transition is under way, polling starts;
//   onState(state): each state of the transition seen while polling (never a settled one);
//   onSettled(state): polling is over ("gone" when the sandbox no longer exists);
//   onRetry({message, seconds}): create answered 429/503; resolves when it is time to retry.
export async function launchSandbox(options) {
  const { urls, csrfToken, deadline, messages, onWaiting, onSettled, onRetry, payload = {} } = options;
  let conflicts = 0;
  for (;;) {
    ensureBefore(deadline, messages);
    const response = await callApi("POST", urls.create, csrfToken, payload);
    const code = response.body?.error?.code;
    if (FINAL_CODES.has(code) || (response.status === 409 && code !== "conflict")) {
      throw refused(response, messages);
    }
    conflicts = response.status === 409 ? conflicts + 1 : 0;
    switch (response.status) {
      case 200:
        return response.body;
      case 409:
        if (conflicts >= MAX_CONFLICTS) throw refused(response, messages);
      // falls through: a transition is under way, wait for it as for 202
      case 202:
        onWaiting?.();
        onSettled?.(await waitUntilSettled({ ...options, response }));
        break;
      case 401:
        throw new SignInRequired();
      case 429:
      case 503:
        await onRetry({
          message: errorText(response, messages),
          seconds: response.retryAfterSeconds ?? DEFAULT_RETRY_SECONDS,
        });
        break;
      default:
        throw refused(response, messages);
    }
  }
}

// Polls GET status until the sandbox leaves its transition; resolves with the settled state,
// or "gone" when it no longer exists. Starts from `response` (a 202 or 409 of create) or from
// a known `state`; takes urls, csrfToken, deadline, messages and onState as launchSandbox does.
export async function waitUntilSettled({ urls, deadline, messages, onState, response, state }) {
  let current = response ? response.body?.sandbox?.state : state;
  let delayMs = pollDelay(response);
  for (;;) {
    if (SETTLED_STATES.has(current)) return current;
    if (current) onState?.(current);
    await sleep(delayMs);
    ensureBefore(deadline, messages);
    const poll = await callApi("GET", urls.status);
    delayMs = pollDelay(poll);
    if (poll.status === 200) current = poll.body?.sandbox?.state;
    else if (poll.status === 404) return "gone"; // POST create makes a new one
    else if (poll.status === 401) throw new SignInRequired();
    else if (poll.status !== 429 && poll.status !== 503) throw refused(poll, messages);
  }
}

// A function that runs `work` once at a time: calls made while it runs are folded into one
// more run after it, and all of them wait for that.
export function coalesced(work) {
  let running = null;
  let again = false;
  return function run() {
    if (running) {
      again = true;
      return running;
    }
    running = (async () => {
      do {
        again = false;
        await work();
      } while (again);
    })().finally(() => {
      running = null;
    });
    return running;
  };
}

export function sleep(ms) {
  return new Promise((resolve) => window.setTimeout(resolve, ms));
}

function pollDelay(response) {
  return response?.retryAfterSeconds ? response.retryAfterSeconds * 1000 : POLL_INTERVAL_MS;
}

function ensureBefore(deadline, messages) {
  if (Date.now() > deadline) throw new LaunchError(messages.tooSlow);
}

// The LaunchError of a response the page cannot carry on from, with the API's error object.
function refused(response, messages) {
  return new LaunchError(errorText(response, messages), response.body?.error ?? null);
}

function errorText(response, messages) {
  return (
    response.body?.error?.message ??
    messages.byStatus?.[response.status] ??
    `Something went wrong (HTTP ${response.status}). Try again.`
  );
}
