// The dashboard's access panels: how to connect (the SSH command, the ~/.ssh/config snippet,
// VS Code, the preview link), and the access ledger with a revoke for each live entry and
// "Revoke everything".

import { SignInRequired, callApi } from "./sandbox-api.js";
import { formatDateTime, parseTime, setTime } from "./server-time.js";

const COPIED_FEEDBACK_MS = 4000;
const KINDS = {
  ssh_token: "SSH token",
  terminal_link: "Terminal link",
  preview_link: "Preview link",
  preview_session: "Preview session",
  terminal_session: "Terminal session",
  ssh_session: "SSH session",
};
const STATES = { active: "Active", ended: "Ended", revoked: "Revoked", expired: "Expired" };

// page: {csrfToken, refresh(), showError(message), signIn(), messageOf(response), urls}.
// Returns {render(dashboard, entries)}; entries null when the ledger could not be read.
export function setUpAccess(page) {
  const byId = (id) => document.getElementById(id);
  const rows = byId("ledger-rows");
  const ledgerStatus = byId("ledger-status");
  const ledgerRegion = rows.closest(".table-scroll");
  let renderedEntries = null;

  setUpCopy(byId("copy-ssh"), byId("ssh-command"), byId("copy-ssh-feedback"));
  setUpCopy(byId("copy-ssh-config"), byId("ssh-config"), byId("copy-ssh-config-feedback"));
  setUpRevokeAll();

  function render(dashboard, entries) {
    renderConnect(dashboard);
    if (entries) renderLedger(entries);
  }

  function renderConnect({ sandbox, access, editor }) {
    const running = sandbox.state === "started" && access;
    byId("connect-empty").hidden = Boolean(running);
    byId("connect-details").hidden = !running;
    if (!running) return;
    setText(byId("ssh-command"), access.ssh?.command ?? "");
    const expiresAt = parseTime(access.ssh?.expiresAt);
    setTime(byId("ssh-expiry"), expiresAt, expiresAt === null ? "unknown" : formatDateTime(expiresAt));

    byId("editor-details").hidden = !editor?.sshConfig;
    setText(byId("ssh-config"), editor?.sshConfig ?? "");
    showLink(byId("vscode-link"), editor?.vscodeUrl, /^vscode:/i);
    showLink(byId("preview-link"), access.preview?.url, /^https?:\/\//i);
    setText(byId("preview-port"), String(access.preview?.port ?? ""));
  }

  function renderLedger(entries) {
    const key = JSON.stringify(entries);
    if (key === renderedEntries) return; // a re-read that changed nothing keeps focus where it is
    renderedEntries = key;
    if (!entries.length) {
      const row = document.createElement("tr");
      const cell = document.createElement("td");
      cell.colSpan = 7;
      cell.className = "ledger__empty";
      cell.textContent = "No credentials or sessions: open your sandbox to get access.";
      row.append(cell);
      rows.replaceChildren(row);
      return;
    }
    rows.replaceChildren(...entries.map(ledgerRow));
  }

  function ledgerRow(entry) {
    const row = document.createElement("tr");
    row.dataset.entryId = entry.id;
    row.dataset.state = entry.state;
    const kind = KINDS[entry.kind] ?? entry.kind;
    const kindCell = document.createElement("td");
    kindCell.append(kind);
    if (entry.label && entry.label !== kind) {
      const label = document.createElement("span");
      label.className = "ledger__label";
      label.textContent = entry.label;
      kindCell.append(label);
    }
    const state = document.createElement("span");
    state.className = `badge ledger__state ledger__state--${entry.state}`;
    state.textContent = STATES[entry.state] ?? entry.state;
    const stateCell = document.createElement("td");
    stateCell.append(state);
    const actionCell = document.createElement("td");
    if (entry.revocable) actionCell.append(revokeButton(entry, kind));
    row.append(
      kindCell,
      timeCell(entry.createdAt, "–"),
      timeCell(entry.expiresAt, "Never"),
      timeCell(entry.lastUsedAt, "Not yet"),
      textCell(entry.lastUsedFrom ?? "–"),
      stateCell,
      actionCell,
    );
    return row;
  }

  function revokeButton(entry, kind) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "button button--danger-outline button--small";
    button.textContent = "Revoke";
    const created = parseTime(entry.createdAt);
    const label = entry.label && entry.label !== kind ? ` ${entry.label}` : "";
    const when = created === null ? "" : `, created ${formatDateTime(created)}`;
    button.setAttribute("aria-label", `Revoke ${kind}${label}${when}`);
    button.addEventListener("click", () => revoke(entry, kind, button));
    return button;
  }

  async function revoke(entry, kind, button) {
    if (button.getAttribute("aria-disabled") === "true") return;
    button.setAttribute("aria-disabled", "true");
    try {
      const url = page.urls.revokeUrl.replace("ENTRY_ID", encodeURIComponent(entry.id));
      const response = await post(url);
      if (response.status !== 200) {
        page.showError(page.messageOf(response));
        return;
      }
      ledgerStatus.textContent = `Revoked: ${kind}.`;
      ledgerRegion.focus(); // the button goes with the re-read ledger
      await page.refresh();
    } catch (error) {
      if (error instanceof SignInRequired) page.signIn();
      else page.showError(error.message);
    } finally {
      button.removeAttribute("aria-disabled");
    }
  }

  function setUpRevokeAll() {
    const opener = byId("revoke-all");
    const dialog = byId("revoke-all-dialog");
    const submit = byId("revoke-all-submit");
    const error = byId("revoke-all-error");
    opener.addEventListener("click", () => {
      error.hidden = true;
      dialog.showModal();
      byId("revoke-all-cancel").focus(); // the safe choice first
    });
    byId("revoke-all-cancel").addEventListener("click", () => dialog.close());
    dialog.addEventListener("close", () => opener.focus());
    byId("revoke-all-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      if (submit.getAttribute("aria-disabled") === "true") return;
      submit.setAttribute("aria-disabled", "true");
      error.hidden = true;
      try {
        const response = await post(page.urls.revokeAllUrl);
        if (response.status !== 200) {
          error.textContent = page.messageOf(response);
          error.hidden = false;
          return;
        }
        const count = response.body?.revoked ?? 0;
        ledgerStatus.textContent =
          count === 1 ? "Revoked 1 credential or session." : `Revoked ${count} credentials and sessions.`;
        dialog.close();
        await page.refresh();
      } catch (failure) {
        if (failure instanceof SignInRequired) {
          page.signIn();
          return;
        }
        error.textContent = failure.message;
        error.hidden = false;
      } finally {
        submit.removeAttribute("aria-disabled");
      }
    });
  }

  async function post(url) {
    const response = await callApi("POST", url, page.csrfToken);
    if (response.status === 401) throw new SignInRequired();
    return response;
  }

  return { render };
}

function setUpCopy(button, source, feedback) {
  let timer = null;
  button.addEventListener("click", async () => {
    window.clearTimeout(timer);
    try {
      await navigator.clipboard.writeText(source.textContent);
      feedback.textContent = "Copied to the clipboard.";
    } catch {
      window.getSelection()?.selectAllChildren(source);
      feedback.textContent = "Copying failed: the text is selected, copy it with Ctrl+C (⌘C).";
    }
    timer = window.setTimeout(() => {
      feedback.textContent = "";
    }, COPIED_FEEDBACK_MS);
  });
}

function timeCell(value, missing) {
  const cell = document.createElement("td");
  const at = parseTime(value);
  if (at === null) {
    cell.textContent = missing;
    return cell;
  }
  const time = document.createElement("time");
  setTime(time, at, formatDateTime(at));
  cell.append(time);
  return cell;
}

function textCell(text) {
  const cell = document.createElement("td");
  cell.textContent = text;
  return cell;
}

function setText(element, text) {
  if (element.textContent !== text) element.textContent = text;
}

function showLink(link, url, allowed) {
  const usable = typeof url === "string" && allowed.test(url);
  link.hidden = !usable;
  if (usable) link.href = url;
  else link.removeAttribute("href");
}
