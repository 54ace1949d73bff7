// The template's app panel of the dashboard: whether something listens on its readiness port
// (the preview is live) and the tail of its log, read from GET /api/sandbox/app while the
// sandbox runs: every 3 s until the app is up, every 15 s after.

import { callApi } from "./sandbox-api.js";

const WAITING_MS = 3000;
const LIVE_MS = 15000;

export function setUpApp({ urls }) {
  const state = document.getElementById("app-state");
  const log = document.getElementById("app-log");
  const previewWaiting = document.getElementById("preview-waiting"); // the preview link's note
  let timer = null;
  let running = false;

  async function poll() {
    timer = null;
    if (!running) return;
    const response = await callApi("GET", urls.appUrl).catch(() => null);
    const app = response?.status === 200 ? response.body : null;
    if (app?.running) {
      state.textContent = app.ready
        ? `Live: something answers on port ${app.port}.`
        : `Waiting for your app to listen on port ${app.port}…`;
      state.dataset.ready = String(app.ready);
      previewWaiting.hidden = app.ready;
      log.textContent = app.log;
      log.hidden = !app.log;
      log.scrollTop = log.scrollHeight;
    }
    timer = window.setTimeout(poll, app?.ready ? LIVE_MS : WAITING_MS);
  }

  return {
    update(dashboard) {
      if (!state) return;
      running = dashboard.sandbox?.state === "started";
      if (!running) {
        state.textContent = "Not running: it starts with your sandbox.";
        state.dataset.ready = "false";
        if (timer) window.clearTimeout(timer);
        timer = null;
      } else if (!timer) {
        poll();
      }
    },
  };
}
