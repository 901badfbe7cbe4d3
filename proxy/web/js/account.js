// Who is logged in: GET /auth/me at start, the login dialog (also on any 401 later, without
// touching the <audio> element), the header's "who", log out, and the change-password dialog.
// What a role may do is asked here (mayEdit) by the views, which hide what it may not.

import { auth, sessions, songs } from "./api.js";
import { $, el, errorText, toast } from "./ui.js";

export class Account extends EventTarget {
  constructor() {
    super();
    this.user = null; // {id, username, role, ...} or null
    this.required = false; // the server refuses anonymous reads (--auth on)
    this.wireLogin();
    this.wirePassword();
    $("account-login").addEventListener("click", () => this.askLogin());
    $("account-logout").addEventListener("click", () => this.logout());
    $("account-password").addEventListener("click", () => this.askPassword());
    sessions.addEventListener("unauthorized", () => {
      // A session that ended (expired, logout-all, a password change elsewhere) or none where
      // one is needed: ask again; whatever plays keeps playing.
      // Anonymous and refused: the server requires accounts. A session refused is one that
      // ended; whether anonymous reads are allowed stays as found at start.
      const hadUser = this.user !== null;
      if (!hadUser) this.required = true;
      this.askLogin(hadUser ? "Your session has ended: log in again. Playback goes on meanwhile." : null);
      if (hadUser) this.setUser(null);
    });
  }

  get isAdmin() {
    return this.user?.role === "admin";
  }

  // May this page change a record owned by ownerId (a song's uploaded_by, a playlist's
  // owner)? Admins: anything; a listener: their own; nobody logged in: only where the server
  // does not require accounts (--auth off), as before accounts.
  mayEdit(ownerId) {
    if (!this.user) return !this.required;
    return this.isAdmin || (ownerId !== null && ownerId !== undefined && ownerId === this.user.id);
  }

  // The session at start: who is logged in, or whether the library needs a login.
  async start() {
    let user = null;
    try {
      user = await auth.me();
    } catch (error) {
      toast(`Could not ask who is logged in: ${errorText(error)}`, { error: true });
    }
    if (!user) {
      try {
        await songs.search({ limit: 1 });
        this.required = false;
      } catch (error) {
        this.required = error.status === 401;
      }
    }
    this.setUser(user);
    if (!user && this.required) this.askLogin();
  }

  setUser(user) {
    this.user = user;
    const who = $("account-who");
    who.hidden = !user;
    who.replaceChildren(...(user ? [el("strong", {}, user.username), " ", el("span", { class: "role" }, `(${user.role})`)] : []));
    $("account-logout").hidden = !user;
    $("account-password").hidden = !user;
    $("account-login").hidden = Boolean(user);
    $("nav-users").hidden = !this.isAdmin;
    document.body.dataset.role = user ? user.role : "anonymous";
    this.dispatchEvent(new CustomEvent("change", { detail: { user } }));
  }

  // ---- login

  askLogin(reason = null) {
    const dialog = $("login-dialog");
    // More 401s follow the first one (the views read again): they keep its reason.
    if (reason || !dialog.open) {
      $("login-reason").hidden = !reason;
      $("login-reason").textContent = reason || "";
    }
    $("login-cancel").hidden = this.required;
    if (!dialog.open) {
      $("login-error").hidden = true;
      $("login-password").value = "";
      dialog.showModal();
      $($("login-username").value ? "login-password" : "login-username").focus();
    }
  }

  wireLogin() {
    const dialog = $("login-dialog");
    // Escape closes a dialog: not the login one while the server requires it.
    dialog.addEventListener("cancel", (event) => { if (this.required) event.preventDefault(); });
    $("login-cancel").addEventListener("click", () => dialog.close());
    $("login-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const username = $("login-username").value.trim();
      const password = $("login-password").value;
      if (!username || !password) return;
      $("login-submit").disabled = true;
      $("login-error").hidden = true;
      try {
        const user = await auth.login(username, password);
        $("login-password").value = "";
        dialog.close();
        this.setUser(user);
        toast(`Logged in as ${user.username}`);
      } catch (error) {
        $("login-error").textContent = loginError(error);
        $("login-error").hidden = false;
        $("login-password").select();
      } finally {
        $("login-submit").disabled = false;
      }
    });
  }

  async logout() {
    try {
      await auth.logout();
    } catch (error) {
      toast(`Logging out failed: ${errorText(error)}`, { error: true });
      return;
    }
    this.setUser(null);
    toast("Logged out");
    if (this.required) this.askLogin();
  }

  // ---- the password of the logged-in account

  askPassword() {
    $("password-form").reset();
    $("password-error").hidden = true;
    $("password-dialog").showModal();
    $("password-old").focus();
  }

  wirePassword() {
    $("password-cancel").addEventListener("click", () => $("password-dialog").close());
    $("password-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const shown = (text) => {
        $("password-error").textContent = text;
        $("password-error").hidden = false;
      };
      if ($("password-new").value !== $("password-repeat").value) {
        shown("The two new passwords differ.");
        return;
      }
      try {
        await auth.changePassword($("password-old").value, $("password-new").value);
      } catch (error) {
        shown(error.status === 401 || error.status === 403 ? "The current password is wrong."
          : error.status === 429 ? `Too many wrong passwords: try again in ${waitText(error.retryAfter)}.`
            : errorText(error));
        return;
      }
      $("password-dialog").close();
      // Every session of the account ended, this one too (the cookie is cleared).
      const name = this.user?.username || "";
      this.setUser(null);
      $("login-username").value = name;
      toast("Password changed: log in with the new one");
      this.askLogin("Your password was changed: log in with the new one.");
    });
  }
}

function waitText(seconds) {
  if (!Number.isFinite(seconds)) return "a while";
  return seconds < 90 ? `${seconds} s` : `${Math.ceil(seconds / 60)} min`;
}

export function loginError(error) {
  if (error.status === 401) return "Wrong username or password.";
  if (error.status === 429) return `Too many failed logins: try again in ${waitText(error.retryAfter)}.`;
  if (error.status === 0) return "Cannot reach the Distpotify proxy.";
  return `Logging in failed: ${errorText(error)}`;
}
