// The admin page (#/users): every account, a new one with its role, disable / enable, reset a
// password, delete. Only admins see it (the replicas refuse the /users routes to anyone else).

import { users as api } from "./api.js";
import { $, el, errorText, reportError, toast } from "./ui.js";

export class UsersView {
  constructor(account) {
    this.account = account;
    this.resetting = null;
    $("new-user").addEventListener("submit", (event) => {
      event.preventDefault();
      const username = $("new-user-name").value.trim();
      const password = $("new-user-password").value;
      const role = $("new-user-role").value;
      if (!username || !password) return;
      api.create(username, password, role).then((user) => {
        $("new-user").reset();
        toast(`Created ${user.role} “${user.username}”`);
        this.show();
      }).catch(reportError("Creating the user failed"));
    });
    $("reset-cancel").addEventListener("click", () => $("reset-dialog").close());
    $("reset-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const user = this.resetting;
      if (!user) return;
      api.update(user.id, { password: $("reset-password").value }).then(() => {
        $("reset-dialog").close();
        toast(`New password set for “${user.username}”; their sessions ended`);
      }).catch((error) => {
        $("reset-error").textContent = errorText(error);
        $("reset-error").hidden = false;
      });
    });
  }

  async show() {
    if (!this.account.isAdmin) {
      $("users-count").textContent = "Only admins manage accounts.";
      $("users-rows").replaceChildren();
      $("new-user").hidden = true;
      return;
    }
    $("new-user").hidden = false;
    let all;
    try {
      all = await api.list();
    } catch (error) {
      $("users-count").textContent = `Could not load the accounts: ${errorText(error)}`;
      return;
    }
    $("users-count").textContent = `${all.length} account${all.length === 1 ? "" : "s"}`;
    $("users-rows").replaceChildren(...all.map((user) => this.row(user)));
  }

  row(user) {
    const self = user.id === this.account.user?.id;
    const change = (changes, done) => api.update(user.id, changes)
      .then(() => { toast(done); this.show(); })
      .catch(reportError(`Changing “${user.username}” failed`));
    const remove = el("button", { type: "button", class: "danger", "aria-label": `Delete ${user.username}` }, "Delete");
    remove.addEventListener("click", () => {
      // Two presses, as for playlists: no accidental delete and no blocking confirm().
      if (!remove.classList.contains("armed")) {
        remove.classList.add("armed");
        remove.textContent = "Really delete?";
        setTimeout(() => { remove.classList.remove("armed"); remove.textContent = "Delete"; }, 4000);
        return;
      }
      api.remove(user.id).then(() => { toast(`Deleted “${user.username}”`); this.show(); })
        .catch(reportError(`Deleting “${user.username}” failed`));
    });
    const other = user.role === "admin" ? "listener" : "admin";
    return el("tr", { class: user.disabled ? "disabled" : "", dataset: { username: user.username } },
      el("td", {}, user.username, self ? el("span", { class: "badge" }, "you") : null),
      el("td", { class: "user-role" }, user.role),
      el("td", { class: "user-state" }, user.disabled ? "disabled" : "enabled"),
      el("td", { class: "muted" }, String(user.created_at || "").slice(0, 19).replace("T", " ")),
      el("td", {}, el("span", { class: "actions" },
        el("button", { type: "button", "aria-label": `Make ${user.username} ${other}`,
          onclick: () => change({ role: other }, `“${user.username}” is now ${other}`) }, `Make ${other}`),
        el("button", { type: "button", "aria-label": `${user.disabled ? "Enable" : "Disable"} ${user.username}`,
          onclick: () => change({ disabled: !user.disabled }, `“${user.username}” ${user.disabled ? "enabled" : "disabled"}`) },
        user.disabled ? "Enable" : "Disable"),
        el("button", { type: "button", "aria-label": `Reset the password of ${user.username}`,
          onclick: () => this.askReset(user) }, "Reset password"),
        remove)));
  }

  askReset(user) {
    this.resetting = user;
    $("reset-form").reset();
    $("reset-error").hidden = true;
    $("reset-user").textContent = user.username;
    $("reset-dialog").showModal();
    $("reset-password").focus();
  }
}
