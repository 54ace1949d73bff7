// Keeps a page up to date with the user's sandbox: pushed over a websocket, polled without one.
//
// The websocket (ws/sandbox/events/) sends {"type": "changed"} whenever the sandbox changed
// anywhere (another tab, the idle policy, an operator, reconcile), and once as soon as it
// listens, since a change may have come while the page was not connected. Each frame calls
// onChange(), which re-reads what the page shows through the API; calls never overlap, and
// frames that arrive during one lead to exactly one more call after it.
//
// While the websocket is down (reconnecting with backoff), and always when the portal pushes
// nothing (websocketUrl null, or the socket closed 4503), the page polls instead: onChange()
// every pollSeconds while the page is visible, and once when it becomes visible again.

const BACKOFF_FIRST_MS = 1000;
const BACKOFF_MAX_MS = 30 * 1000;
const CLOSE_SIGNED_OUT = 4401;
const CLOSE_TOO_MANY_CONNECTIONS = 4430;
const CLOSE_NO_PUSH = 4503;

// The absolute ws: or wss: URL of a path on this page's site.
function socketUrl(path) {
  const url = new URL(path, window.location.href);
  if (url.protocol === "https:") url.protocol = "wss:";
  else if (url.protocol === "http:") url.protocol = "ws:";
  return url.href;
}

// Starts watching; returns a function that stops it (closing the websocket, ending the polls).
export function watchSandbox({ websocketUrl, pollSeconds, onChange }) {
  const pollMs = Math.max(1, Number(pollSeconds) || 2) * 1000;
  let stopped = false;
  let socket = null;
  let listening = false; // the socket is open and has said it listens
  let backoffMs = BACKOFF_FIRST_MS;
  let reconnectTimer = null;
  let pollTimer = null;
  let running = false;
  let again = false;

  async function changed() {
    if (stopped) return;
    if (running) {
      again = true;
      return;
    }
    running = true;
    try {
      do {
        again = false;
        try {
          await onChange();
        } catch (error) {
          console.warn("reading the sandbox's state failed", error);
        }
      } while (again && !stopped);
    } finally {
      running = false;
    }
  }

  function startPolling() {
    if (pollTimer === null && !stopped) {
      pollTimer = window.setInterval(() => {
        if (document.visibilityState === "visible") changed();
      }, pollMs);
    }
  }

  function stopPolling() {
    if (pollTimer !== null) window.clearInterval(pollTimer);
    pollTimer = null;
  }

  function connect() {
    reconnectTimer = null;
    if (stopped) return;
    let ws;
    try {
      ws = new WebSocket(socketUrl(websocketUrl));
    } catch {
      reconnectLater(BACKOFF_MAX_MS);
      return;
    }
    socket = ws;
    ws.addEventListener("message", (event) => {
      if (typeof event.data !== "string") return;
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      if (!message || message.type !== "changed") return;
      if (!listening) {
        listening = true;
        backoffMs = BACKOFF_FIRST_MS;
        stopPolling();
      }
      changed();
    });
    ws.addEventListener("close", (event) => {
      if (socket === ws) socket = null;
      listening = false;
      if (stopped) return;
      startPolling();
      if (event.code === CLOSE_NO_PUSH || event.code === CLOSE_SIGNED_OUT) return; // polling from now on
      reconnectLater(event.code === CLOSE_TOO_MANY_CONNECTIONS ? BACKOFF_MAX_MS : backoffMs);
      backoffMs = Math.min(backoffMs * 2, BACKOFF_MAX_MS);
    });
  }

  function reconnectLater(delayMs) {
    if (stopped || reconnectTimer !== null) return;
    const jitter = 0.5 + Math.random() / 2; // pages of one user do not all come back at once
    reconnectTimer = window.setTimeout(connect, delayMs * jitter);
  }

  function reconnectNow() {
    if (reconnectTimer === null || stopped) return;
    window.clearTimeout(reconnectTimer);
    connect();
  }

  function onVisible() {
    if (document.visibilityState !== "visible") return;
    if (pollTimer !== null) changed();
    reconnectNow();
  }

  document.addEventListener("visibilitychange", onVisible);
  window.addEventListener("online", reconnectNow);
  startPolling(); // until the websocket says it listens
  if (websocketUrl) connect();

  return function stop() {
    stopped = true;
    stopPolling();
    if (reconnectTimer !== null) window.clearTimeout(reconnectTimer);
    reconnectTimer = null;
    document.removeEventListener("visibilitychange", onVisible);
    window.removeEventListener("online", reconnectNow);
    if (socket !== null) socket.close(1000);
    socket = null;
  };
}
