// Playlists: the list, one playlist (play it in order, rename, make public, delete, remove
// items), and the "add to playlist" dialog used from the library and the queue. What changes a
// playlist shows only to its owner and to admins (a public one is read-only to others).

import { playlists as api, covers } from "./api.js";
import { songById } from "./library.js";
import {
  $, coverArt, el, errorText, formatTime, plural, reportError, songArtist, songTitle, toast,
} from "./ui.js";

// Writes go to the leader; during an election the proxy answers 503 and we retry: say so.
const electionNotice = () => {
  let shown = null;
  return () => {
    if (!shown?.isConnected) shown = toast("The cluster is electing a leader; retrying…", { ms: 3000 });
  };
};

const playable = (songs) => songs.filter((song) => !song.missing);

export class Playlists {
  constructor(player, account) {
    this.player = player;
    this.account = account;
    this.current = null;
    this.deleteArmed = false;
    $("new-playlist").addEventListener("submit", (event) => {
      event.preventDefault();
      const input = $("new-playlist-name");
      const name = input.value.trim();
      if (!name) return;
      api.create(name, electionNotice()).then((playlist) => {
        input.value = "";
        toast(`Created “${playlist.name}”`);
        location.hash = `#/playlists/${playlist.id}`;
      }).catch(reportError("Creating the playlist failed"));
    });
    $("playlist-play").addEventListener("click", () => {
      if (this.current) this.player.playAll(playable(this.current.songs));
    });
    $("playlist-rename").addEventListener("click", () => {
      $("rename-form").hidden = false;
      $("rename-name").value = this.current?.name || "";
      $("rename-name").focus();
    });
    $("rename-cancel").addEventListener("click", () => { $("rename-form").hidden = true; });
    $("rename-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const name = $("rename-name").value.trim();
      if (!name || !this.current) return;
      api.rename(this.current.id, name, electionNotice()).then(() => {
        $("rename-form").hidden = true;
        this.open(this.current.id);
      }).catch(reportError("Renaming failed"));
    });
    $("playlist-delete").addEventListener("click", () => this.deleteClicked());
    $("playlist-public").addEventListener("change", () => {
      if (!this.current) return;
      const wanted = $("playlist-public").checked;
      api.setPublic(this.current.id, wanted, electionNotice()).then(() => {
        this.current.public = wanted;
        toast(wanted ? `“${this.current.name}” is public: everyone may play it` : `“${this.current.name}” is private`);
      }).catch((error) => {
        $("playlist-public").checked = !wanted;
        reportError("Changing the playlist failed")(error);
      });
    });
    this.wireDialog();
  }

  async showAll() {
    let all;
    try {
      all = await this.readList();
    } catch (error) {
      $("playlist-list").replaceChildren(el("li", { class: "empty" }, `Could not load playlists: ${errorText(error)}`));
      return;
    }
    $("playlists-empty").hidden = all.length > 0;
    $("playlist-list").replaceChildren(...all.map((playlist) => el("li", {},
      el("a", { href: `#/playlists/${playlist.id}` }, el("strong", {}, playlist.name),
        el("span", { class: "badges" },
          playlist.public ? el("span", { class: "badge" }, "public") : null,
          this.mine(playlist) ? null : el("span", { class: "badge" }, "read-only"))))));
  }

  async open(id) {
    this.deleteDisarm();
    $("rename-form").hidden = true;
    let playlist;
    try {
      playlist = await api.get(id);
      playlist.songs = await Promise.all(playlist.items.map((item) =>
        songById(item.song_id).catch(() => ({ id: item.song_id, title: "(song no longer available)", missing: true }))));
    } catch (error) {
      $("playlist-title").textContent = "Playlist not found";
      $("playlist-count").textContent = errorText(error);
      $("playlist-items").replaceChildren();
      this.current = null;
      return;
    }
    this.current = playlist;
    const mine = this.mine(playlist);
    $("playlist-rename").hidden = !mine;
    $("playlist-delete").hidden = !mine;
    $("playlist-public-label").hidden = !mine || playlist.public === undefined;
    $("playlist-public").checked = Boolean(playlist.public);
    $("playlist-title").textContent = playlist.name;
    const seconds = playlist.songs.reduce((sum, song) => sum + (song.duration || 0), 0);
    $("playlist-count").textContent = `${plural(playlist.songs.length, "song")} · ${formatTime(seconds)}`;
    $("playlist-empty").hidden = playlist.items.length > 0;
    $("playlist-play").disabled = !playlist.items.length;
    $("playlist-items").replaceChildren(...playlist.items.map((item, position) => {
      const song = playlist.songs[position];
      const label = `${songTitle(song)} by ${songArtist(song)}`;
      return el("li", { class: "row" },
        el("span", { class: "idx" }, String(position + 1)),
        el("span", { class: "cell-title" },
          coverArt(song, 36, covers.albumUrl),
          el("span", { class: "title-text" },
            el("button", { type: "button", class: "linkish", disabled: song.missing, "aria-label": `Play ${label} and the rest of the playlist`,
              onclick: () => this.player.playAll(playable(playlist.songs), playable(playlist.songs.slice(0, position)).length) }, songTitle(song)),
            el("span", { class: "sub" }, songArtist(song)))),
        el("span", { class: "col-time time" }, formatTime(song.duration)),
        el("span", { class: "actions" },
          el("button", { type: "button", class: "icon", "aria-label": `Add ${label} to the queue`, title: "Add to queue", disabled: song.missing,
            onclick: () => this.player.enqueue(song) }, "⤓"),
          mine ? el("button", { type: "button", class: "icon", "aria-label": `Remove ${label} from the playlist`, title: "Remove from playlist",
            onclick: () => api.removeItem(playlist.id, item.id, electionNotice())
              .then(() => this.open(playlist.id)).catch(reportError("Removing failed")) }, "×") : null));
    }));
  }

  deleteClicked() {
    if (!this.current) return;
    if (!this.deleteArmed) {
      // Two presses: no accidental delete, and no blocking confirm() box.
      this.deleteArmed = true;
      $("playlist-delete").textContent = "Really delete?";
      this.disarmTimer = setTimeout(() => this.deleteDisarm(), 4000);
      return;
    }
    const { id, name } = this.current;
    this.deleteDisarm();
    api.remove(id, electionNotice()).then(() => {
      toast(`Deleted “${name}”`);
      location.hash = "#/playlists";
    }).catch(reportError("Deleting failed"));
  }

  deleteDisarm() {
    clearTimeout(this.disarmTimer);
    this.deleteArmed = false;
    $("playlist-delete").textContent = "Delete";
  }

  readList() {
    return api.list();
  }

  // May this account change the playlist? (Its owner, or an admin; anyone with --auth off and
  // nobody logged in, as before accounts.)
  mine(playlist) {
    return this.account.mayEdit(playlist.owner);
  }

  // ---- the "add to playlist" dialog

  wireDialog() {
    const dialog = $("add-dialog");
    $("add-dialog-create").addEventListener("click", () => {
      const name = $("add-dialog-new").value.trim();
      if (!name) {
        $("add-dialog-new").focus();
        return;
      }
      api.create(name, electionNotice())
        .then((playlist) => this.addTo(playlist))
        .catch(reportError("Creating the playlist failed"));
    });
    $("add-dialog-new").addEventListener("keydown", (event) => {
      if (event.key === "Enter") {
        event.preventDefault();
        $("add-dialog-create").click();
      }
    });
    dialog.addEventListener("close", () => { this.adding = null; });
  }

  async chooseFor(song) {
    this.adding = song;
    $("add-dialog-song").textContent = `${songTitle(song)} — ${songArtist(song)}`;
    $("add-dialog-new").value = "";
    $("add-dialog-list").replaceChildren(el("li", { class: "muted" }, "Loading playlists…"));
    $("add-dialog").showModal();
    try {
      const all = (await this.readList()).filter((playlist) => this.mine(playlist));
      $("add-dialog-list").replaceChildren(...all.map((playlist) => el("li", {},
        el("button", { type: "button", onclick: () => this.addTo(playlist) }, playlist.name))));
      if (!all.length) $("add-dialog-list").replaceChildren(el("li", { class: "muted" }, "No playlists yet: name a new one below."));
    } catch (error) {
      $("add-dialog-list").replaceChildren(el("li", { class: "error-text" }, `Could not load playlists: ${errorText(error)}`));
    }
  }

  async addTo(playlist) {
    const song = this.adding;
    if (!song) return;
    try {
      await api.addItem(playlist.id, song.id, electionNotice());
    } catch (error) {
      reportError("Adding to the playlist failed")(error);
      return;
    }
    $("add-dialog").close();
    toast(`Added “${songTitle(song)}” to “${playlist.name}”`);
    if (this.current?.id === playlist.id && location.hash.startsWith("#/playlists/")) this.open(playlist.id);
  }
}
