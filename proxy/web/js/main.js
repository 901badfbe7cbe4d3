// The web player's entry point: builds the views, routes #/... to them, keyboard shortcuts.

import { Account } from "./account.js";
import { served } from "./api.js";
import { ApiKeys } from "./apikeys.js";
import { ClusterView } from "./cluster.js";
import { Library, remember } from "./library.js";
import { Player } from "./player.js";
import { Playlists } from "./playlists.js";
import { $, isTyping } from "./ui.js";
import { Uploader } from "./upload.js";
import { UsersView } from "./users.js";

const account = new Account();
new ApiKeys(account);
let playlists;
const player = new Player({ addToPlaylist: (song) => playlists.chooseFor(song) });
playlists = new Playlists(player, account);
const library = new Library({
  play: (song) => player.playNow(song),
  enqueue: (song) => player.enqueue(song),
  addToPlaylist: (song) => playlists.chooseFor(song),
  playAll: (list) => player.playAll(list),
  mayEdit: (song) => account.mayEdit(song.uploaded_by),
});
const clusterView = new ClusterView(account);
const usersView = new UsersView(account);
new Uploader({ onUploaded: (song) => { remember([song]); library.invalidate(); } });

served.addEventListener("served", (event) => {
  const pill = $("served-pill");
  pill.textContent = `served by: node ${event.detail.node}`;
  pill.title = `The replica that answered ${event.detail.path} (X-Served-By)`;
});

// #/library, #/artists[/NAME], #/albums[/NAME], #/playlists[/ID], #/queue, #/upload, #/cluster,
// #/users (admins)
function route() {
  const [name = "library", ...rest] = location.hash.replace(/^#\/?/, "").split("/");
  const arg = rest.length ? decodeURIComponent(rest.join("/")) : null;
  let view = name;
  let nav = name;
  switch (name) {
    case "artists":
    case "albums":
      if (arg === null) {
        view = "groups";
        library.showGroups(name.slice(0, -1));
      } else {
        view = "library";
        library.show(name.slice(0, -1), arg);
      }
      break;
    case "playlists":
      if (arg === null) playlists.showAll();
      else {
        view = "playlist";
        playlists.open(arg);
      }
      break;
    case "queue":
    case "upload":
    case "cluster":
      break;
    case "users":
      if (!account.isAdmin) {
        view = nav = "library";
        library.show();
      } else usersView.show();
      break;
    default:
      view = nav = "library";
      library.show();
  }
  for (const section of document.querySelectorAll(".view")) section.hidden = section.dataset.view !== view;
  for (const link of document.querySelectorAll("[data-nav]")) {
    if (link.dataset.nav === nav) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  clusterView.setVisible(view === "cluster");
}

window.addEventListener("hashchange", () => {
  route();
  $("main").focus({ preventScroll: true });
});

// Space plays or pauses, arrows seek (Shift: previous/next song) and set the volume, "/"
// searches. Typing in a field, or a focused control that uses the key itself, comes first.
document.addEventListener("keydown", (event) => {
  if (event.defaultPrevented || event.ctrlKey || event.metaKey || event.altKey || isTyping(event.target)) return;
  if (document.querySelector("dialog[open]")) return;
  const onControl = event.target instanceof HTMLElement && event.target.closest("button, a, summary");
  const inList = event.target instanceof HTMLElement && event.target.closest(".vlist, .rows, .groups");
  const actions = {
    " ": () => !onControl && player.toggle(),
    k: () => player.toggle(),
    ArrowLeft: () => (event.shiftKey ? player.previous() : player.seekBy(-5)),
    ArrowRight: () => (event.shiftKey ? player.next() : player.seekBy(5)),
    ArrowUp: () => !inList && player.setVolume(player.audio.volume + 0.05),
    ArrowDown: () => !inList && player.setVolume(player.audio.volume - 0.05),
    "/": () => {
      if (location.hash && !location.hash.startsWith("#/library")) location.hash = "#/library";
      $("search").focus();
    },
  };
  const action = actions[event.key];
  if (!action || action() === false) return;
  event.preventDefault();
});

// Someone logged in or out: what the views show depends on who (and the session they read
// with), so the current view is read again. The <audio> element is left alone.
account.start().then(() => {
  account.addEventListener("change", () => {
    library.invalidate();
    route();
    clusterView.start();
  });
  route();
  clusterView.start();
});
