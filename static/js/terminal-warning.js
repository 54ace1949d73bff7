// The terminal page's idle-stop warning (stop-warning.js); after the banner goes, the keyboard
// is back in the terminal.

import { watchStopWarning } from "./stop-warning.js";

const element = document.getElementById("stop-warning");

if (element) {
  watchStopWarning({
    element,
    dashboardUrl: element.dataset.dashboardUrl,
    csrfToken: document.querySelector('meta[name="csrf-token"]').content,
    returnFocus: () => document.getElementById("terminal")?.terminal?.focus(),
  });
}
