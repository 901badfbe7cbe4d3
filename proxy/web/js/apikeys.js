// The logged-in account's Subsonic API keys (the OpenSubsonic apiKey extension): the apps on
// phones, cars and desktops log in with one instead of the password. Listed by name and date;
// a new key's secret is shown once, with a button that copies it; a key can be revoked.

import { apiKeys as api } from "./api.js";
import { $, el, errorText, reportError, toast } from "./ui.js";

const MAX_NAME = 100;

export class ApiKeys {
  constructor(account) {
    this.account = account;
    const dialog = $("apikeys-dialog");
    $("account-apikeys").addEventListener("click", () => this.open());
    $("apikeys-close").addEventListener("click", () => dialog.close());
    // The secret is shown until the dialog closes, never again.
    dialog.addEventListener("close", () => this.hideSecret());
    $("apikeys-copy").addEventListener("click", () => this.copy());
    $("apikeys-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.create();
    });
    account.addEventListener("change", () => {
      $("account-apikeys").hidden = !account.user;
      if (!account.user && dialog.open) dialog.close();
    });
  }

  open() {
    this.hideSecret();
    $("apikeys-form").reset();
    $("apikeys-error").hidden = true;
    $("apikeys-dialog").showModal();
    $("apikeys-name").focus();
    this.load();
  }

  async load() {
    $("apikeys-status").textContent = "Loading…";
    let keys;
    try {
      keys = await api.list();
    } catch (error) {
      $("apikeys-status").textContent = `Could not load your API keys: ${errorText(error)}`;
      $("apikeys-list").replaceChildren();
      return;
    }
    $("apikeys-status").textContent = keys.length
      ? `${keys.length} key${keys.length === 1 ? "" : "s"}`
      : "No API keys yet.";
    $("apikeys-list").replaceChildren(...keys.map((key) => this.row(key)));
  }

  row(key) {
    const name = key.name || "unnamed";
    const created = key.created_at ? new Date(key.created_at) : null;
    const revoke = el("button", { type: "button", class: "danger", "aria-label": `Revoke the key “${name}”` }, "Revoke");
    revoke.addEventListener("click", () => {
      // Two presses, as for a delete in the library: an app using it stops working.
      if (!revoke.classList.contains("armed")) {
        revoke.classList.add("armed");
        revoke.textContent = "Really revoke?";
        setTimeout(() => { revoke.classList.remove("armed"); revoke.textContent = "Revoke"; }, 4000);
        return;
      }
      api.revoke(key.id).then(() => {
        toast(`Revoked the API key “${name}”`);
        this.load();
      }).catch(reportError("Revoking the key failed"));
    });
    return el("li", { class: "apikey", dataset: { id: key.id } },
      el("span", { class: "apikey-name" }, el("strong", {}, name)),
      el("span", { class: "muted" }, created && !Number.isNaN(created.getTime())
        ? el("time", { datetime: key.created_at }, created.toLocaleString()) : ""),
      revoke);
  }

  async create() {
    const name = $("apikeys-name").value.trim();
    if (!name) return;
    if (name.length > MAX_NAME) {
      this.error(`A name has at most ${MAX_NAME} characters.`);
      return;
    }
    $("apikeys-create").disabled = true;
    $("apikeys-error").hidden = true;
    try {
      const answer = await api.create(name);
      $("apikeys-form").reset();
      this.showSecret(answer.key?.name || name, answer.apiKey);
      this.load();
    } catch (error) {
      this.error(`Creating the key failed: ${errorText(error)}`);
    } finally {
      $("apikeys-create").disabled = false;
    }
  }

  error(text) {
    $("apikeys-error").textContent = text;
    $("apikeys-error").hidden = false;
  }

  showSecret(name, secret) {
    $("apikeys-secret-name").textContent = name;
    $("apikeys-secret").value = secret || "";
    $("apikeys-copy").textContent = "Copy";
    $("apikeys-new").hidden = false;
    $("apikeys-secret").select();
  }

  hideSecret() {
    $("apikeys-secret").value = "";
    $("apikeys-new").hidden = true;
  }

  async copy() {
    const field = $("apikeys-secret");
    try {
      await navigator.clipboard.writeText(field.value);
    } catch {
      // No clipboard API (a page over plain HTTP on another host): the old way.
      field.select();
      if (!document.execCommand("copy")) {
        toast("Copying failed: select the key and copy it yourself", { error: true });
        return;
      }
    }
    $("apikeys-copy").textContent = "Copied";
    toast("API key copied");
  }
}
