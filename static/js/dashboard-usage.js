// The dashboard's usage panels: what the sandbox cost today and this month, with a forecast
// to the month's end; the monthly budget and running-hours cap as bars, with a notice at 80 %
// and a stronger one at 100 % saying what happens then; the running sandbox's memory and disk,
// with a notice when either is nearly full.
//
// GET /api/sandbox/usage, read when the page loads, every minute while the page is visible,
// and whenever the dashboard sees the sandbox's state change.

import { currencyFormat, moneyFormat } from "./money.js";
import { callApi, coalesced } from "./sandbox-api.js";
import { formatClockTime, formatDateTime, formatDuration, parseTime, setTime } from "./server-time.js";

const REFRESH_MS = 60 * 1000;
const BYTES_PER_GIB = 1024 ** 3;
const LIMITS = {
  cost: { name: "monthly budget", key: "cost" },
  running_hours: { name: "running hours", key: "runningHours" },
};
const RESOURCES = {
  memory: "Programs may be killed when it runs out: close what you do not need, or restart the sandbox.",
  disk: "Writes fail when it is full: delete files you do not need (build caches, node_modules you can reinstall).",
};

// page: {clock, signIn(), messageOf(response), urls}. Returns {update(dashboard)}, to be called
// with each answer of the dashboard.
export function setUpUsage(page) {
  const byId = (id) => document.getElementById(id);
  const root = byId("usage");
  const url = root.dataset.usageUrl;
  const notices = byId("usage-notices");
  const status = byId("usage-status");
  let usage = null;
  let sandboxState = null;
  let renderedNotices = null;
  // Calls made while a read runs are folded into one more read after it.
  const load = coalesced(read);

  window.setInterval(() => {
    if (document.visibilityState === "visible") load();
  }, REFRESH_MS);

  // Reads the usage again when the sandbox's state changed (it started, stopped, was reset).
  function update(dashboard) {
    const state = dashboard?.sandbox?.state ?? null;
    if (state === sandboxState && usage !== null) return;
    sandboxState = state;
    load();
  }

  async function read() {
    let response;
    try {
      response = await callApi("GET", url);
    } catch (error) {
      status.textContent = `Usage could not be read: ${error.message}`;
      return;
    }
    if (response.status === 401) return page.signIn();
    if (response.status !== 200) {
      status.textContent = `Usage could not be read: ${page.messageOf(response)}`;
      return;
    }
    status.textContent = "";
    usage = response.body;
    render();
  }

  function render() {
    const money = moneyFormat(usage.currency);
    const now = parseTime(usage.now) ?? page.clock.now();
    setText(byId("usage-today"), money(usage.today.cost));
    setText(byId("usage-month"), money(usage.month.cost));
    setText(byId("usage-forecast"), money(usage.forecast.monthEndCost));
    setText(
      byId("usage-running"),
      `${runningTime(usage.today.runningSeconds)} today, ${runningTime(usage.month.runningSeconds)} this month`,
    );
    setText(byId("usage-rates"), ratesText(usage.rates, usage.currency));
    renderBudget(usage.budget, money);
    renderResources(usage.resources, now);
    renderNotices(money, now);
  }

  function renderBudget(budget, money) {
    const cost = budget.cost;
    const hours = budget.runningHours;
    byId("budget-none").hidden = Boolean(cost || hours);
    byId("budget-resets").hidden = !(cost || hours);
    byId("budget-cost").hidden = !cost;
    byId("budget-hours").hidden = !hours;
    if (cost) {
      meter("budget-cost", cost.percent, `${money(cost.used)} of ${money(cost.allowed)} (${percent(cost.percent)})`);
    }
    if (hours) {
      meter("budget-hours", hours.percent, `${hours.used} of ${hours.allowed} h (${percent(hours.percent)})`);
    }
    setText(
      byId("budget-action"),
      budget.action === "stop"
        ? `At ${percent(100)}, your running sandbox is stopped after a warning and cannot be started again.`
        : `At ${percent(100)}, your sandbox cannot be started again (a running one keeps running).`,
    );
    const resetsAt = parseTime(budget.resetsAt);
    setTime(byId("budget-resets-at"), resetsAt, resetsAt === null ? "–" : formatDateTime(resetsAt));
  }

  function renderResources(resources, now) {
    const running = sandboxState === "started";
    const shown = running && resources !== null;
    byId("resources-details").hidden = !shown;
    byId("resources-idle").hidden = shown;
    setText(
      byId("resources-idle"),
      running
        ? "Not measured yet: memory and disk use show here within a minute or two."
        : "Not running: memory and disk use show here while your sandbox runs.",
    );
    if (!shown) return;
    for (const name of ["memory", "disk"]) {
      const use = resources[name];
      meter(
        `resources-${name}`,
        use.percent,
        `${gib(use.usedBytes)} of ${gib(use.limitBytes)} GiB (${percent(use.percent)})`,
      );
    }
    const sampledAt = parseTime(resources.sampledAt);
    setTime(byId("resources-sampled-at"), sampledAt, sampledAt === null ? "–" : formatClockTime(sampledAt, now));
  }

  // One notice per limit at its highest threshold reached (by the alerts raised and the figures
  // now: a budget raised since an alert lifts it), and one per nearly full resource.
  function renderNotices(money, now) {
    const items = [];
    for (const [limit, { name, key }] of Object.entries(LIMITS)) {
      const figures = usage.budget[key];
      if (!figures) continue;
      const reached = usage.alerts
        .filter((alert) => alert.kind === "budget" && alert.limit === limit && alert.threshold <= figures.percent)
        .map((alert) => alert.threshold);
      if (figures.percent >= 100) reached.push(100);
      if (!reached.length) continue;
      items.push(budgetNotice(name, key, figures, Math.max(...reached), money, now));
    }
    if (sandboxState === "started") {
      for (const alert of usage.alerts.filter((entry) => entry.kind === "resource")) {
        const use = usage.resources?.[alert.resource];
        const amounts = use ? `${gib(use.usedBytes)} of ${gib(use.limitBytes)} GiB in use. ` : "";
        items.push({
          level: "warning",
          kind: `resource-${alert.resource}`,
          title: `Your sandbox's ${alert.resource} is ${percent(use?.percent ?? alert.percent)} full.`,
          text: `${amounts}${RESOURCES[alert.resource] ?? alert.message}`,
        });
      }
    }
    const key = JSON.stringify(items);
    if (key === renderedNotices) return; // unchanged: not announced again
    renderedNotices = key;
    notices.replaceChildren(...items.map(noticeElement));
  }

  function budgetNotice(name, key, figures, threshold, money, now) {
    const amounts =
      key === "cost"
        ? `${money(figures.used)} of ${money(figures.allowed)}`
        : `${figures.used} of ${figures.allowed} hours`;
    const resetsAt = parseTime(usage.budget.resetsAt);
    const resets = resetsAt === null ? "next month" : formatDateTime(resetsAt);
    if (threshold < 100) {
      const then =
        usage.budget.action === "stop"
          ? "your running sandbox will be stopped and it cannot be started again"
          : "your sandbox cannot be started again";
      return {
        level: "warning",
        kind: `budget-${key}-${threshold}`,
        title: `You have used ${percent(figures.percent)} of your ${name}.`,
        text: `${amounts} so far this month. At ${percent(100)}, ${then} until the budget resets on ${resets}.`,
      };
    }
    const stopAt = parseTime(usage.budget.stopAt);
    let action;
    if (usage.budget.action === "stop" && stopAt !== null) {
      action = `Your sandbox stops at ${formatClockTime(stopAt, now)} and cannot be started again until ${resets}.`;
    } else if (usage.budget.action === "stop") {
      action = `Your sandbox is stopped and cannot be started again until ${resets}.`;
    } else {
      action = `Your sandbox cannot be started again until ${resets}; a running one keeps running until it stops.`;
    }
    return {
      level: "error",
      kind: `budget-${key}-100`,
      title: `You have used all of your ${name} (${amounts}).`,
      text: `${action} Ask an operator if you need more this month.`,
    };
  }

  return { update };
}

function noticeElement({ level, kind, title, text }) {
  const box = document.createElement("div");
  box.className = `alert alert--${level} usage__notice`;
  box.dataset.notice = kind;
  const heading = document.createElement("p");
  heading.className = "alert__message";
  heading.textContent = title;
  const body = document.createElement("p");
  body.className = "alert__detail";
  body.textContent = text;
  box.append(heading, body);
  return box;
}

// Fills one bar and its text; the bar's level (ok, warning, over) colours it, the text says it.
function meter(id, value, text) {
  const bar = document.getElementById(`${id}-bar`);
  const clamped = Math.min(Math.max(Number(value) || 0, 0), 100);
  bar.value = clamped;
  bar.setAttribute("aria-valuetext", text);
  bar.dataset.level = value >= 100 ? "over" : value >= 80 ? "warning" : "ok";
  bar.textContent = text;
  setText(document.getElementById(`${id}-text`), text);
}

// The rates with every place they are set with (a disk rate is a fraction of a cent).
function ratesText(rates, currency) {
  const rate = (value) => {
    const places = Math.min(Math.max((String(value).split(".")[1] ?? "").length, 2), 6);
    return currencyFormat(currency, places).format(Number(value));
  };
  return (
    `While it runs: ${rate(rates.vcpuHour)} per vCPU-hour and ${rate(rates.memoryGibHour)} per GiB-hour of ` +
    `memory. While it exists (running or stopped): ${rate(rates.diskGibHour)} per GiB-hour of disk beyond ` +
    `${rates.freeDiskGib} GiB free. The forecast carries this month's pace so far to its end.`
  );
}

function runningTime(seconds) {
  return seconds > 0 ? formatDuration(seconds * 1000) : "none";
}

function gib(bytes) {
  return (bytes / BYTES_PER_GIB).toLocaleString(undefined, { minimumFractionDigits: 1, maximumFractionDigits: 1 });
}

function percent(value) {
  return new Intl.NumberFormat(undefined, { style: "percent", maximumFractionDigits: 0 }).format(value / 100);
}

function setText(element, text) {
  if (element.textContent !== text) element.textContent = text;
}
