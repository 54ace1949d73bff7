// Times as the portal's pages show them: measured by the server's clock (the browser's may be
// wrong), shown in the browser's own time zone and language.

const MINUTE_MS = 60 * 1000;
const HOUR_MS = 60 * MINUTE_MS;
const DAY_MS = 24 * HOUR_MS;

// The server's clock as seen from this page: sync() with the server's "now" of each answer.
export class ServerClock {
  constructor() {
    this.offsetMs = 0;
  }

  sync(serverNow) {
    const at = parseTime(serverNow);
    if (at !== null) this.offsetMs = at - Date.now();
  }

  now() {
    return Date.now() + this.offsetMs;
  }
}

// Milliseconds since the epoch of an ISO 8601 string, or null.
export function parseTime(value) {
  if (!value) return null;
  const at = Date.parse(value);
  return Number.isNaN(at) ? null : at;
}

// "14:32" for a moment today (by `nowMs`), "5 Dec, 14:32" for any other day.
export function formatClockTime(atMs, nowMs) {
  const at = new Date(atMs);
  if (at.toDateString() === new Date(nowMs).toDateString()) {
    return at.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });
  }
  return at.toLocaleString(undefined, { day: "numeric", month: "short", hour: "2-digit", minute: "2-digit" });
}

export function formatDateTime(atMs) {
  return new Date(atMs).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

// "less than a minute", "45 min", "2 h 5 min", "3 d 4 h".
export function formatDuration(ms) {
  if (ms < MINUTE_MS) return "less than a minute";
  const days = Math.floor(ms / DAY_MS);
  const hours = Math.floor((ms % DAY_MS) / HOUR_MS);
  const minutes = Math.floor((ms % HOUR_MS) / MINUTE_MS);
  if (days) return hours ? `${days} d ${hours} h` : `${days} d`;
  if (hours) return minutes ? `${hours} h ${minutes} min` : `${hours} h`;
  return `${minutes} min`;
}

// "30 min", "1 h", "1 h 30 min" for a number of minutes.
export function formatMinutes(minutes) {
  return formatDuration(minutes * MINUTE_MS);
}

// Fills a <time> element: its machine-readable datetime and its text (untouched when equal, so
// that a live region around it is not announced again for nothing).
export function setTime(element, atMs, text) {
  const datetime = atMs === null ? "" : new Date(atMs).toISOString();
  if (element.getAttribute("datetime") !== datetime) {
    if (datetime) element.setAttribute("datetime", datetime);
    else element.removeAttribute("datetime");
  }
  if (element.textContent !== text) element.textContent = text;
}
