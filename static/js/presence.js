// Tells the portal whether a person is using this page, for the idle policy.
//
// Once a minute, while the page is visible, it POSTs {"interacted": true|false} to the heartbeat
// URL: true when someone pressed a key or used the pointer on the page since the last beat. Only
// that counts as activity; an open, untouched or hidden tab is not someone working, so it lets
// the sandbox stop after its idle period.

import { callApi } from "./sandbox-api.js";

const BEAT_INTERVAL_MS = 60 * 1000;
// Listened to in the capture phase: widgets such as the terminal stop the events they handle.
const INTERACTIONS = ["keydown", "pointerdown", "pointermove", "wheel", "touchstart"];

// Starts the beats; returns a function that stops them (the page stops them itself once the
// portal says the user is signed out).
export function startPresence({ url, csrfToken }) {
  let interacted = false;
  let lastBeatAt = Date.now();
  const note = () => {
    if (document.visibilityState === "visible") interacted = true;
  };
  for (const type of INTERACTIONS) window.addEventListener(type, note, { capture: true, passive: true });

  async function beat() {
    if (document.visibilityState !== "visible") return;
    lastBeatAt = Date.now();
    const body = { interacted };
    interacted = false;
    try {
      const response = await callApi("POST", url, csrfToken, body);
      if (response.status === 401) stop();
    } catch {
      // Offline for a moment: the next beat tries again. Other statuses (no sandbox yet, a
      // sandbox stopped meanwhile) need no reaction from the page.
    }
  }

  const timer = window.setInterval(beat, BEAT_INTERVAL_MS);
  const onVisible = () => {
    if (document.visibilityState === "visible" && Date.now() - lastBeatAt >= BEAT_INTERVAL_MS) beat();
  };
  document.addEventListener("visibilitychange", onVisible);

  function stop() {
    window.clearInterval(timer);
    document.removeEventListener("visibilitychange", onVisible);
    for (const type of INTERACTIONS) window.removeEventListener(type, note, { capture: true });
  }
  return stop;
}
