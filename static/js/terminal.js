// The browser terminal: xterm.js over a websocket to a shell in the user's sandbox.
//
// Protocol (see sandboxes/consumers.py):
//   ws /ws/sandboxes/<id>/terminal/?cols=C&rows=R[&session=<the session the server gave us>]
//   binary frames both ways: keystrokes/paste (UTF-8) in, raw shell output out.
//   text frames are JSON control: we send {"type":"resize"|"pause"|"resume"}; the server sends
//   {"type":"attached","session"}, {"type":"status","state"} (then close 4409),
//   {"type":"exit","code"} (then close 1000), {"type":"idle"} (then close 4408) and
//   {"type":"error","message"} (then a close worth retrying, or 4429).
//   Close codes: 4401 signed out, 4404 not found, 4408 no input or output for longer than the
//   idle period, 4409 sandbox not running, 4429 too many terminals, 4430 too many terminal
//   connections of this user, 4400 bad request; anything
//   else unplanned means reconnect with backoff.
//
// The server names the session; its id lives in sessionStorage, one per tab: a reload or a
// reconnect reattaches to the same shell, which keeps running in the sandbox while nobody is
// connected (for a while: the portal ends shells nobody has been attached to for long). Right
// after "attached" the server sends the session's recent output (its scrollback), so a reattach
// shows the prompt and the last lines at once; a reconnect of this page starts from a clean
// screen for that replay, rather than showing those lines twice.
// presence.js tells the portal every minute whether someone used the page.

import { startPresence } from "./presence.js";
import { LaunchError, SignInRequired, launchSandbox, sleep, waitUntilSettled } from "./sandbox-api.js";

const CLOSE_BAD_REQUEST = 4400;
const CLOSE_SIGNED_OUT = 4401;
const CLOSE_NOT_FOUND = 4404;
const CLOSE_IDLE = 4408;
const CLOSE_NOT_RUNNING = 4409;
const CLOSE_TOO_MANY = 4429;
const CLOSE_TOO_MANY_CONNECTIONS = 4430;
const FIRST_RETRY_SECONDS = 1;
const MAX_RETRY_SECONDS = 30;
const RESIZE_DEBOUNCE_MS = 80;
const RESUME_TIMEOUT_MS = 5 * 60 * 1000;
// Output handed to xterm but not yet rendered: above HIGH the server is asked to pause
// (the shell then blocks on its output), below LOW to resume.
const FLOW_HIGH_WATER = 4 * 1024 * 1024;
const FLOW_LOW_WATER = 512 * 1024;

const RESUME_MESSAGES = {
  tooSlow: "Your sandbox is taking longer than usual to start. Try again.",
};
const STARTING_STATES = new Set(["creating", "starting"]);
const STATE_TEXT = {
  pending: "Your sandbox has not been created yet.",
  stopping: "Your sandbox is stopping.",
  stopped: "Your sandbox is stopped.",
  archived: "Your sandbox is stopped (archived).",
  error: "Your sandbox ran into an error.",
  gone: "Your sandbox no longer exists; resuming creates a new one.",
  unknown: "Your sandbox is not running.",
};

const app = document.getElementById("terminal-app");
const screen = document.getElementById("terminal");

if (app && screen && typeof window.Terminal === "function") {
  setUpTerminal();
}

function setUpTerminal() {
  const byId = (id) => document.getElementById(id);
  const statusBox = app.querySelector(".terminal-status");
  const statusText = byId("terminal-status");
  const resumeButton = byId("terminal-resume");
  const reconnectButton = byId("terminal-reconnect");
  const newShellButton = byId("terminal-new-shell");
  const signInLink = byId("terminal-sign-in");
  const csrfToken = document.querySelector('meta[name="csrf-token"]').content;
  const remoteId = app.dataset.remoteId;
  const urls = {
    socket: app.dataset.socketPath,
    create: app.dataset.createUrl,
    status: app.dataset.statusUrl,
    heartbeat: app.dataset.heartbeatUrl,
    login: app.dataset.loginUrl,
    terminalTemplate: app.dataset.terminalPath,
  };
  const sessionKey = `terminal-session:${remoteId}`;
  const encoder = new TextEncoder();
  const isMac = /Mac|iPhone|iPad/.test(navigator.platform || navigator.userAgent);

  const term = new window.Terminal({
    cursorBlink: true,
    fontFamily: cssVariable("--font-mono") || "monospace",
    fontSize: 14,
    scrollback: 5000,
    macOptionIsMeta: true,
    rightClickSelectsWord: true,
    theme: {
      background: cssVariable("--code-bg") || "#11151d",
      foreground: cssVariable("--code-text") || "#e3e8f0",
    },
  });
  // The canvas renderer draws without the <style> elements of xterm's DOM renderer, which
  // the page's Content-Security-Policy (style-src 'self') would block. Loaded before open()
  // so the DOM renderer is never created.
  if (window.CanvasAddon) term.loadAddon(new window.CanvasAddon.CanvasAddon());
  const fitAddon = new window.FitAddon.FitAddon();
  term.loadAddon(fitAddon);
  if (window.WebLinksAddon) {
    term.loadAddon(
      new window.WebLinksAddon.WebLinksAddon((event, uri) => {
        if (/^https?:\/\//i.test(uri)) window.open(uri, "_blank", "noopener,noreferrer");
      }),
    );
  }
  term.open(screen);
  // For automation and the browser console: the terminal (and its buffer) of this page.
  screen.terminal = term;
  fitAddon.fit();

  let socket = null;
  let attached = false;
  let failures = 0;
  let retryTimer = null;
  let countdownTimer = null;
  let lastStatus = null;
  let lastError = "";
  let exitCode = null;
  let unrendered = 0;
  let paused = false;
  let resuming = false;
  let outputShown = false; // by an earlier connection of this page

  term.onData((data) => sendInput(encoder.encode(data)));
  term.onBinary((data) => sendInput(Uint8Array.from(data, (char) => char.charCodeAt(0) & 0xff)));
  term.onResize(({ cols, rows }) => sendControl({ type: "resize", cols, rows }));
  term.attachCustomKeyEventHandler(handleClipboardKeys);

  let resizeTimer = null;
  new ResizeObserver(() => {
    window.clearTimeout(resizeTimer);
    resizeTimer = window.setTimeout(() => fitAddon.fit(), RESIZE_DEBOUNCE_MS);
  }).observe(screen);

  resumeButton.addEventListener("click", resume);
  reconnectButton.addEventListener("click", () => connect());
  newShellButton.addEventListener("click", startNewShell);
  window.addEventListener("online", () => {
    if (retryTimer !== null) connect();
  });

  startPresence({ url: urls.heartbeat, csrfToken });
  connect();

  // -- connection ------------------------------------------------------------------------

  function connect() {
    clearRetry();
    if (socket) {
      const old = socket;
      socket = null;
      old.close();
    }
    attached = false;
    exitCode = null;
    lastStatus = null;
    lastError = "";
    unrendered = 0;
    paused = false;
    showButtons({});
    setStatus(failures ? "Reconnecting…" : "Connecting…", "busy");
    const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
    const query = new URLSearchParams({ cols: term.cols, rows: term.rows });
    const session = storedSession();
    if (session) query.set("session", session);
    const ws = new WebSocket(`${scheme}//${window.location.host}${urls.socket}?${query}`);
    ws.binaryType = "arraybuffer";
    ws.addEventListener("message", (event) => {
      if (ws === socket) onMessage(event);
    });
    ws.addEventListener("close", (event) => {
      if (ws === socket) onClose(event);
    });
    socket = ws;
  }

  function onMessage(event) {
    if (typeof event.data !== "string") {
      writeOutput(new Uint8Array(event.data));
      return;
    }
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      return;
    }
    switch (message.type) {
      case "attached":
        if (outputShown) term.reset(); // the replay that follows repaints what was there
        outputShown = false;
        attached = true;
        failures = 0;
        if (typeof message.session === "string") sessionStorage.setItem(sessionKey, message.session);
        app.dataset.connection = "online";
        setStatus("Connected", "ok");
        showButtons({});
        // The window may have changed size while the shell was being attached.
        sendControl({ type: "resize", cols: term.cols, rows: term.rows });
        term.focus();
        break;
      case "status":
        lastStatus = message;
        break;
      case "exit":
        exitCode = message.code;
        break;
      case "error":
      case "idle":
        lastError = message.message || "";
        break;
    }
  }

  function onClose(event) {
    socket = null;
    attached = false;
    app.dataset.connection = "offline";
    switch (event.code) {
      case CLOSE_SIGNED_OUT:
        setStatus("You are signed out. Sign in again to use the terminal.", "error");
        showButtons({ signIn: true });
        return;
      case CLOSE_NOT_FOUND:
        setStatus("This sandbox was not found. Open your sandbox from the portal.", "error");
        return;
      case CLOSE_NOT_RUNNING:
        showNotRunning(lastStatus?.state);
        return;
      case CLOSE_IDLE:
        // Reconnecting by itself would keep an unused terminal open for ever.
        setStatus("Disconnected: nothing was typed or printed for a long time.", "stopped");
        showButtons({ reconnect: true });
        return;
      case CLOSE_TOO_MANY:
        setStatus(lastError || "You have too many terminals open. Close one, then reconnect.", "error");
        showButtons({ reconnect: true });
        return;
      case CLOSE_TOO_MANY_CONNECTIONS:
        setStatus(lastError || "You have too many terminal tabs open. Close one, then reconnect.", "error");
        showButtons({ reconnect: true });
        return;
      case CLOSE_BAD_REQUEST:
        sessionStorage.removeItem(sessionKey);
        break;
    }
    if (exitCode !== null) {
      setStatus(`The shell exited (code ${exitCode}). Press Enter or the button to start a new one.`, "stopped");
      showButtons({ newShell: true });
      return;
    }
    scheduleReconnect();
  }

  function scheduleReconnect() {
    failures += 1;
    const ceiling = Math.min(MAX_RETRY_SECONDS, FIRST_RETRY_SECONDS * 2 ** (failures - 1));
    let remaining = Math.max(1, Math.round(ceiling * (0.5 + Math.random() / 2)));
    const reason = lastError ? `${lastError} ` : "Connection lost. ";
    const render = () => setStatus(`${reason}Reconnecting in ${remaining} s…`, "busy");
    render();
    showButtons({ reconnect: true });
    countdownTimer = window.setInterval(() => {
      remaining -= 1;
      if (remaining > 0) render();
    }, 1000);
    retryTimer = window.setTimeout(connect, remaining * 1000);
  }

  function clearRetry() {
    window.clearTimeout(retryTimer);
    window.clearInterval(countdownTimer);
    retryTimer = null;
    countdownTimer = null;
  }

  function startNewShell() {
    sessionStorage.removeItem(sessionKey);
    term.reset();
    failures = 0;
    connect();
  }

  // -- input and output ------------------------------------------------------------------

  function sendInput(bytes) {
    if (attached && socket && socket.readyState === WebSocket.OPEN) {
      socket.send(bytes);
    } else if (exitCode !== null && bytes.length === 1 && bytes[0] === 13) {
      startNewShell(); // Enter after the shell exited
    }
  }

  function sendControl(message) {
    if (attached && socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(message));
  }

  function writeOutput(bytes) {
    outputShown = true;
    unrendered += bytes.length;
    term.write(bytes, () => {
      unrendered -= bytes.length;
      if (paused && unrendered <= FLOW_LOW_WATER) {
        paused = false;
        sendControl({ type: "resume" });
      }
    });
    if (!paused && unrendered > FLOW_HIGH_WATER) {
      paused = true;
      sendControl({ type: "pause" });
    }
  }

  // Ctrl+C copies when text is selected (and interrupts otherwise); Ctrl+Shift+C always
  // copies; Ctrl+V and Ctrl+Shift+V paste through the browser's paste event, which xterm
  // turns into input (bracketed when the shell asks for it). On macOS ⌘C/⌘V do this natively.
  function handleClipboardKeys(event) {
    if (event.type !== "keydown" || isMac || !event.ctrlKey || event.altKey || event.metaKey) return true;
    const key = event.key.toLowerCase();
    if (key === "c" && event.shiftKey) {
      event.preventDefault();
      copySelection();
      return false;
    }
    if (key === "c" && term.hasSelection()) {
      // The browser's own copy runs: xterm puts the selection on the clipboard.
      window.setTimeout(() => term.clearSelection(), 0);
      return false;
    }
    if (key === "v") return false; // let the browser paste
    return true;
  }

  function copySelection() {
    const text = term.getSelection();
    if (!text) return;
    navigator.clipboard?.writeText(text).catch(() => {});
  }

  // -- sandbox not running: resume -------------------------------------------------------

  function showNotRunning(state) {
    if (STARTING_STATES.has(state)) {
      setStatus("Your sandbox is starting…", "busy");
      waitUntilSettled({ ...resumeOptions(), state }).then(afterSettled, showResumeError);
      return;
    }
    setStatus(STATE_TEXT[state] || STATE_TEXT.unknown, "stopped");
    showButtons({ resume: true });
    resumeButton.focus();
  }

  function afterSettled(state) {
    if (state === "started") connect();
    else showNotRunning(state);
  }

  async function resume() {
    if (resuming) return;
    resuming = true;
    resumeButton.setAttribute("aria-disabled", "true");
    setStatus("Resuming your sandbox…", "busy");
    try {
      const sandbox = (await launchSandbox(resumeOptions()))?.sandbox;
      if (sandbox?.id && sandbox.id !== remoteId) {
        // A sandbox that was gone has been made anew, under a new id: its own page.
        window.location.assign(urls.terminalTemplate.replace("REMOTE_ID", encodeURIComponent(sandbox.id)));
        return;
      }
      failures = 0;
      connect();
    } catch (error) {
      showResumeError(error);
    } finally {
      resuming = false;
      resumeButton.removeAttribute("aria-disabled");
    }
  }

  function showResumeError(error) {
    if (error instanceof SignInRequired) {
      window.location.assign(urls.login);
      return;
    }
    setStatus(error instanceof LaunchError ? error.message : "Resuming failed. Try again.", "error");
    showButtons({ resume: true });
  }

  // What launchSandbox and waitUntilSettled need from this page, with a fresh deadline.
  function resumeOptions() {
    return {
      urls,
      csrfToken,
      deadline: Date.now() + RESUME_TIMEOUT_MS,
      messages: RESUME_MESSAGES,
      onState: showStarting,
      onRetry: retryAfterWaiting,
    };
  }

  function showStarting(state) {
    if (STARTING_STATES.has(state)) setStatus("Your sandbox is starting…", "busy");
  }

  function retryAfterWaiting({ message, seconds }) {
    setStatus(`${message} Retrying…`, "busy");
    return sleep(seconds * 1000);
  }

  // -- page bits -------------------------------------------------------------------------

  // The session the server named for this tab, if any (it names a new one otherwise).
  function storedSession() {
    const id = sessionStorage.getItem(sessionKey);
    if (id && /^[A-Za-z0-9-]{1,64}$/.test(id)) return id;
    sessionStorage.removeItem(sessionKey);
    return null;
  }

  function setStatus(text, tone) {
    statusText.textContent = text;
    statusBox.dataset.tone = tone;
  }

  function showButtons({ resume = false, reconnect = false, newShell = false, signIn = false }) {
    resumeButton.hidden = !resume;
    reconnectButton.hidden = !reconnect;
    newShellButton.hidden = !newShell;
    signInLink.hidden = !signIn;
  }

  function cssVariable(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }
}
