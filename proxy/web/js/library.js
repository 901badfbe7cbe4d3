// The library: server-side search as you type, a windowed song list that stays fast with
// tens of thousands of songs (only the visible rows exist, pages load as they come into view),
// sorted by the replicas (GET /songs?sort=), and the artist and album views.

import { allSongs, covers, songs as songApi } from "./api.js";
import {
  $, coverArt, debounce, el, errorText, fold, formatTime, plural, reportError, songAlbum,
  songArtist, songTitle, toast,
} from "./ui.js";

const COVER_PX = 36; // a row's album cover

const PAGE = 100; // songs per request of the windowed list
const OVERSCAN = 8;
const GROUPS_FRESH_MS = 20_000;

// Every song seen in any answer, by id: the queue and playlists show songs from here.
const known = new Map();

export function remember(list) {
  for (const song of list) known.set(song.id, song);
  return list;
}

export async function songById(id) {
  if (!known.has(id)) remember([(await songApi.get(id)).song]);
  return known.get(id);
}

// Lazily paged /songs, in the order the replicas sort it (filter.sort, newest by default).
class PagedSource {
  constructor(filter) {
    this.filter = filter;
    this.total = null;
    this.pages = new Map();
    this.loading = new Set();
    this.failedAt = new Map();
    this.onupdate = () => {};
    this.controller = new AbortController();
  }

  get(index) {
    return this.pages.get(Math.floor(index / PAGE))?.[index % PAGE];
  }

  ensure(from, to) {
    const last = this.total === null ? Math.floor(from / PAGE) : Math.floor(Math.max(from, to - 1) / PAGE);
    for (let page = Math.floor(from / PAGE); page <= last; page++) {
      if (this.pages.has(page) || this.loading.has(page)) continue;
      if (Date.now() - (this.failedAt.get(page) || 0) < 2000) continue;
      this.load(page);
    }
  }

  async load(page) {
    this.loading.add(page);
    try {
      const answer = await songApi.search({ ...this.filter, limit: PAGE, offset: page * PAGE }, this.controller.signal);
      this.pages.set(page, remember(answer.songs));
      this.total = answer.total;
      this.failedAt.delete(page);
    } catch (error) {
      if (error.name === "AbortError") return;
      this.failedAt.set(page, Date.now());
      reportError("Loading songs failed")(error);
      if (this.total === null) this.total = 0;
    } finally {
      this.loading.delete(page);
    }
    this.onupdate();
  }

  async all() {
    return this.total !== null && this.pages.size * PAGE >= this.total
      ? [...this.pages.keys()].sort((a, b) => a - b).flatMap((page) => this.pages.get(page))
      : remember(await allSongs(this.filter, this.controller.signal));
  }

  close() {
    this.controller.abort();
  }
}

class ArraySource {
  constructor(list) {
    this.list = list;
    this.total = list.length;
    this.onupdate = () => {};
  }

  get(index) {
    return this.list[index];
  }

  ensure() {}

  async all() {
    return this.list;
  }

  close() {}
}

const collator = new Intl.Collator(undefined, { sensitivity: "base", numeric: true });
const byText = (field) => (a, b) => collator.compare(a[field] || "\uffff", b[field] || "\uffff");
const byNumber = (field) => (a, b) => (a[field] ?? Infinity) - (b[field] ?? Infinity);
const chain = (...comparators) => (a, b) => {
  for (const compare of comparators) {
    const order = compare(a, b);
    if (order) return order;
  }
  return 0;
};
const SORTS = {
  title: chain(byText("title"), byText("artist")),
  artist: chain(byText("artist"), byText("album"), byNumber("track"), byText("title")),
  album: chain(byText("album"), byNumber("track"), byText("title")),
  duration: chain(byNumber("duration"), byText("title")),
  track: chain(byText("album"), byNumber("track"), byText("title")),
};

// The windowed list: rows are absolutely placed in a spacer as tall as all of them; only the
// rows in view (plus a few) are in the DOM, kept by index so focus survives scrolling.
class SongList {
  constructor(container, actions) {
    this.container = container;
    this.spacer = container.querySelector(".vlist-spacer");
    this.actions = actions;
    this.rows = new Map();
    this.source = new ArraySource([]);
    this.rowHeight = 48;
    this.frame = 0;
    container.addEventListener("scroll", () => this.schedule(), { passive: true });
    new ResizeObserver(() => this.schedule()).observe(container);
  }

  setSource(source, { keepScroll = false } = {}) {
    this.source.close();
    this.source = source;
    source.onupdate = () => this.schedule();
    for (const row of this.rows.values()) row.remove();
    this.rows.clear();
    if (!keepScroll) this.container.scrollTop = 0;
    this.schedule();
  }

  schedule() {
    if (!this.frame) this.frame = requestAnimationFrame(() => { this.frame = 0; this.render(); });
  }

  render() {
    this.rowHeight = parseFloat(getComputedStyle(this.container).getPropertyValue("--row-h")) || 48;
    const total = this.source.total ?? 0;
    const top = this.container.scrollTop;
    const height = this.container.clientHeight || 600;
    const first = Math.max(0, Math.floor(top / this.rowHeight) - OVERSCAN);
    const end = Math.min(total, Math.ceil((top + height) / this.rowHeight) + OVERSCAN);
    this.source.ensure(first, Math.max(end, first + 1));
    this.spacer.style.height = `${total * this.rowHeight}px`;
    for (const [index, row] of this.rows) {
      if (index < first || index >= end || (row.dataset.id === "" && this.source.get(index))) {
        row.remove();
        this.rows.delete(index);
      }
    }
    for (let index = first; index < end; index++) {
      if (this.rows.has(index)) continue;
      const row = this.row(index, this.source.get(index), total);
      this.rows.set(index, row);
      this.spacer.append(row);
    }
    this.onrender?.();
  }

  row(index, song, total) {
    const attributes = {
      class: "row", role: "listitem", "aria-setsize": total, "aria-posinset": index + 1,
      style: { transform: `translateY(${index * this.rowHeight}px)` }, dataset: { id: song?.id ?? "" },
    };
    if (!song) return el("div", { ...attributes, class: "row loading" }, el("span", { class: "idx" }, String(index + 1)), el("span", { class: "muted" }, "…"));
    const label = `${songTitle(song)} by ${songArtist(song)}`;
    return el("div", attributes,
      el("span", { class: "idx" }, String(index + 1)),
      el("span", { class: "cell-title" },
        coverArt(song, COVER_PX, covers.albumUrl),
        el("span", { class: "title-text" },
          el("button", { type: "button", class: "linkish", "aria-label": `Play ${label}`, title: "Play",
            onclick: () => this.actions.play(song) }, songTitle(song)),
          el("span", { class: "sub" }, songArtist(song)))),
      el("span", { class: "cell-artist" }, el("a", { href: `#/artists/${encodeURIComponent(song.artist || "")}` }, songArtist(song))),
      el("span", { class: "cell-album col-album" }, song.album ? el("a", { href: `#/albums/${encodeURIComponent(song.album)}` }, songAlbum(song)) : ""),
      el("span", { class: "col-time time" }, formatTime(song.duration)),
      el("span", { class: "actions" },
        el("button", { type: "button", class: "icon", "aria-label": `Add ${label} to the queue`, title: "Add to queue",
          onclick: () => this.actions.enqueue(song) }, "⤓"),
        el("button", { type: "button", class: "icon", "aria-label": `Add ${label} to a playlist`, title: "Add to playlist",
          onclick: () => this.actions.addToPlaylist(song) }, "+"),
        // Only on the songs this account may delete (its own uploads; any, for an admin).
        this.actions.mayEdit?.(song) ? this.deleteButton(song, label) : null));
  }

  deleteButton(song, label) {
    const button = el("button", { type: "button", class: "icon danger", "aria-label": `Delete ${label}`, title: "Delete" }, "✕");
    button.addEventListener("click", () => {
      // Two presses: no accidental delete, and no blocking confirm() box.
      if (!button.classList.contains("armed")) {
        button.classList.add("armed");
        button.title = "Press again to delete";
        button.setAttribute("aria-label", `Really delete ${label}?`);
        setTimeout(() => {
          button.classList.remove("armed");
          button.title = "Delete";
          button.setAttribute("aria-label", `Delete ${label}`);
        }, 4000);
        return;
      }
      songApi.remove(song.id).then(() => {
        known.delete(song.id);
        toast(`Deleted “${songTitle(song)}”`);
        this.actions.deleted?.(song);
      }).catch(reportError("Deleting the song failed"));
    });
    return button;
  }
}

export class Library {
  constructor(actions) {
    this.actions = actions;
    this.list = new SongList($("song-list"), { ...actions, deleted: () => this.invalidate() });
    this.list.onrender = () => this.showCount();
    this.scope = { kind: "all", name: "" };
    this.generation = 0;
    this.groupsCache = null;
    const search = $("search");
    search.addEventListener("input", debounce(() => this.reload(), 250));
    search.addEventListener("keydown", (event) => { if (event.key === "Escape") { search.value = ""; this.reload(); } });
    $("sort").addEventListener("change", () => this.reload());
    $("play-all").addEventListener("click", () =>
      this.list.source.all().then((list) => actions.playAll(list)).catch(reportError("Play all")));
    $("group-filter").addEventListener("input", () => this.renderGroups());
  }

  // Routes: #/library, #/artists/NAME, #/albums/NAME.
  show(kind = "all", name = "") {
    const changed = kind !== this.scope.kind || name !== this.scope.name;
    this.scope = { kind, name };
    $("library-title").textContent = kind === "all" ? "Library" : name || `Unknown ${kind}`;
    $("library-back").hidden = kind === "all";
    $("library-back").href = kind === "all" ? "#/library" : `#/${kind}s`;
    $("library-back").textContent = kind === "artist" ? "All artists" : "All albums";
    if (changed) {
      $("search").value = "";
      $("sort").value = kind === "album" ? "album" : kind === "artist" ? "artist" : "newest";
    }
    if (changed || !this.loaded) this.reload();
  }

  // A song was added (or removed): reload where we are. The reload sees it: the proxy makes
  // our reads wait for our own writes.
  invalidate() {
    this.groupsCache = null;
    if (this.loaded) this.reload({ keepScroll: true });
  }

  async reload({ keepScroll = false } = {}) {
    this.loaded = true;
    const generation = ++this.generation;
    const q = $("search").value.trim();
    const sort = $("sort").value;
    const { kind, name } = this.scope;
    this.setCount("Loading…");
    // The whole library pages in from the server, in the server's order.
    if (kind === "all") {
      try {
        const first = await songApi.search({ q, sort, limit: PAGE });
        if (generation !== this.generation) return;
        const source = new PagedSource({ q, sort });
        source.pages.set(0, remember(first.songs));
        source.total = first.total;
        this.list.setSource(source, { keepScroll });
      } catch (error) {
        if (generation === this.generation) this.setCount(`Could not load songs: ${errorText(error)}`);
      }
      return;
    }
    try {
      let list = remember(await allSongs({ [kind]: name })).filter((song) => fold(song[kind]) === fold(name));
      if (q) list = list.filter((song) => [song.title, song.artist, song.album].some((text) => fold(text).includes(fold(q))));
      if (SORTS[sort]) list = [...list].sort(SORTS[sort]);
      if (generation === this.generation) this.list.setSource(new ArraySource(list), { keepScroll });
    } catch (error) {
      if (generation === this.generation) this.setCount(`Could not load songs: ${errorText(error)}`);
    }
  }

  showCount() {
    const total = this.list.source.total;
    if (total === null) return;
    const q = $("search").value.trim();
    const text = plural(total, "song") + (q ? ` matching “${q}”` : "");
    this.setCount(text);
    const empty = $("library-empty");
    empty.hidden = total !== 0;
    empty.textContent = q ? `No song matches “${q}”.` : "No songs yet. Drop audio files anywhere on this page, or use Upload.";
  }

  setCount(text) {
    if ($("library-count").textContent !== text) $("library-count").textContent = text;
  }

  // #/artists and #/albums: every artist or album with its number of songs.
  async showGroups(kind) {
    this.groupKind = kind;
    $("groups-title").textContent = kind === "artist" ? "Artists" : "Albums";
    $("group-filter").placeholder = kind === "artist" ? "Filter artists" : "Filter albums";
    if (!this.groupsCache || Date.now() - this.groupsCache.at > GROUPS_FRESH_MS) {
      $("groups-count").textContent = "Loading…";
      try {
        this.groupsCache = { at: Date.now(), songs: remember(await allSongs()) };
      } catch (error) {
        $("groups-count").textContent = `Could not load the library: ${errorText(error)}`;
        return;
      }
    }
    this.renderGroups();
  }

  renderGroups() {
    const kind = this.groupKind;
    if (!this.groupsCache || !kind) return;
    const groups = new Map();
    for (const song of this.groupsCache.songs) {
      const name = song[kind] || "";
      const key = fold(name);
      const group = groups.get(key) || { name, songs: 0, seconds: 0, others: new Set() };
      group.songs += 1;
      group.seconds += song.duration || 0;
      group.others.add(kind === "artist" ? song.album || "" : song.artist || "");
      groups.set(key, group);
    }
    const filter = fold($("group-filter").value.trim());
    const shown = [...groups.values()]
      .filter((group) => !filter || fold(group.name).includes(filter))
      .sort((a, b) => collator.compare(a.name || "\uffff", b.name || "\uffff"));
    $("groups-count").textContent = plural(shown.length, kind);
    $("group-list").replaceChildren(...shown.map((group) => el("li", {},
      el("a", { href: `#/${kind}s/${encodeURIComponent(group.name)}` },
        el("strong", {}, group.name || `Unknown ${kind}`),
        el("span", { class: "muted" }, `${plural(group.songs, "song")} · ${formatTime(group.seconds)}` +
          (kind === "album" && group.others.size === 1 ? ` · ${[...group.others][0] || "Unknown artist"}` : ""))))));
  }
}
