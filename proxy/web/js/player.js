// The player: one <audio> on /songs/{id}/stream (Range, so seeking works), the play queue,
// Media Session, and recovery: a stream that fails or stalls is reloaded at its position.

import { ApiError, covers, songs as songApi } from "./api.js";
import { $, coverArt, el, errorText, formatTime, plural, songArtist, songTitle, toast } from "./ui.js";

const STORE = "distpotify.player";
const STALL_MS = 8000;
const GIVE_UP_MS = 120_000; // a cluster that stays away longer is not coming back soon

const NOW_COVER_PX = 48;
// The artwork sizes offered to the Media Session (lock screens, notifications, watches).
const ARTWORK_SIZES = [96, 256, 512];

const PLAY_PATH = "M7 4v16l13-8z";
const PAUSE_PATH = "M6 4h4v16H6zM14 4h4v16h-4z";

export class Player extends EventTarget {
  constructor({ addToPlaylist }) {
    super();
    this.audio = $("audio");
    this.addToPlaylist = addToPlaylist;
    this.queue = [];
    this.index = -1;
    this.wantPlaying = false;
    this.resumeAt = null;
    this.troubleSince = null; // when the current run of recoveries began
    this.attempt = 0;
    this.lastProgress = { time: 0, at: Date.now() };
    this.seeking = false;
    this.lastRecoveredAt = 0;
    this.restore();
    this.wire();
    this.renderNow();
    this.renderQueue();
  }

  get current() {
    return this.queue[this.index] ?? null;
  }

  // ---- queue

  playNow(song) {
    const at = this.index + 1;
    this.queue.splice(at, 0, slim(song));
    this.start(at);
  }

  playAll(list, from = 0) {
    if (!list.length) {
      toast("Nothing to play");
      return;
    }
    this.queue = list.map(slim);
    this.start(from);
  }

  enqueue(song) {
    this.queue.push(slim(song));
    this.changed();
    toast(`Added “${songTitle(song)}” to the queue`);
  }

  removeAt(position) {
    this.queue.splice(position, 1);
    if (position < this.index) this.index -= 1;
    else if (position === this.index) {
      if (this.queue.length) this.start(Math.min(position, this.queue.length - 1), this.wantPlaying);
      else this.stop();
      return;
    }
    this.changed();
  }

  move(position, by) {
    const to = position + by;
    if (to < 0 || to >= this.queue.length) return;
    const [song] = this.queue.splice(position, 1);
    this.queue.splice(to, 0, song);
    if (this.index === position) this.index = to;
    else if (this.index === to) this.index = position;
    this.changed();
    requestAnimationFrame(() => document.querySelector(`#queue-items li:nth-child(${to + 1}) [data-move="${by}"]`)?.focus());
  }

  clear() {
    this.queue = [];
    this.stop();
  }

  next() {
    if (this.index + 1 < this.queue.length) this.start(this.index + 1);
    else {
      this.wantPlaying = false;
      this.audio.pause();
    }
  }

  previous() {
    if (this.audio.currentTime > 3 || this.index <= 0) this.audio.currentTime = 0;
    else this.start(this.index - 1);
  }

  // ---- playback

  start(position, play = true) {
    this.index = position;
    this.troubleSince = null;
    this.attempt = 0;
    this.resumeAt = null;
    this.load(play);
    this.changed();
  }

  load(play) {
    const song = this.current;
    if (!song) return;
    this.wantPlaying = play;
    this.lastProgress = { time: this.resumeAt ?? 0, at: Date.now() };
    this.audio.src = songApi.streamUrl(song.id);
    if (play) this.playAudio();
    this.renderNow();
    this.mediaSession();
  }

  play() {
    if (!this.current) {
      if (this.queue.length) this.start(0);
      return;
    }
    if (!this.audio.getAttribute("src") || this.audio.error) {
      this.load(true);
      return;
    }
    this.playAudio();
  }

  playAudio() {
    this.wantPlaying = true;
    this.audio.play().catch((error) => {
      // A superseded load rejects with AbortError: the newer load plays.
      if (error.name === "NotAllowedError") {
        this.wantPlaying = false;
        this.status("Press play to start (the browser blocked autoplay)");
      }
    });
  }

  toggle() {
    if (this.audio.paused) this.play();
    else {
      this.wantPlaying = false;
      this.audio.pause();
    }
  }

  stop() {
    this.wantPlaying = false;
    this.index = -1;
    this.audio.removeAttribute("src");
    this.audio.load();
    this.changed();
  }

  seekBy(seconds) {
    if (!this.current) return;
    const duration = this.duration();
    this.audio.currentTime = Math.max(0, Math.min(this.audio.currentTime + seconds, Number.isFinite(duration) ? duration - 0.1 : Infinity));
  }

  setVolume(volume) {
    this.audio.volume = Math.max(0, Math.min(1, volume));
    this.audio.muted = false;
  }

  duration() {
    const fromElement = this.audio.duration;
    return Number.isFinite(fromElement) && fromElement > 0 ? fromElement : this.current?.duration ?? NaN;
  }

  // A network error, or no progress for STALL_MS while we mean to play: reload the stream at
  // the position reached (the proxy picks a healthy replica). A song that is gone is skipped.
  async recover(reason) {
    const song = this.current;
    if (!song || this.recovering) return;
    this.recovering = true;
    try {
      const at = this.resumeAt ?? this.audio.currentTime;
      this.troubleSince ??= Date.now();
      if (Date.now() - this.troubleSince > GIVE_UP_MS) {
        this.wantPlaying = false;
        this.status(`Playback stopped: ${reason}. Press play to try again.`);
        this.troubleSince = null;
        this.attempt = 0;
        this.resumeAt = at;
        return;
      }
      this.attempt += 1;
      const problem = await this.probe(song);
      if (song !== this.current) return;
      if (problem?.status === 404) {
        toast(`“${songTitle(song)}” is no longer in the library; skipped`, { error: true });
        this.next();
        return;
      }
      if (problem?.code === "format" && at < 1) {
        toast(`This browser cannot play “${songTitle(song)}” (${song.mime || "unknown type"}); skipped`, { error: true });
        this.next();
        return;
      }
      const wait = Math.min(500 * 2 ** (this.attempt - 1), 4000);
      this.status(`Reconnecting (${problem ? errorText(problem) : reason})…`);
      await new Promise((resolve) => setTimeout(resolve, wait));
      if (song !== this.current) return;
      this.resumeAt = at;
      // A new source starts at defaultPlaybackRate: the reload goes on at the rate it had, as
      // at the position (at 1x again, what the browser had cached played on for minutes).
      const rate = this.audio.playbackRate;
      this.load(this.wantPlaying);
      this.audio.playbackRate = rate;
    } finally {
      this.recovering = false;
    }
  }

  // What the stream answers now: null when it can be read, else an ApiError (status 0 for
  // a readable stream the browser still refused).
  async probe(song) {
    try {
      // Never from the HTTP cache: a cached answer would hide a song deleted or a cluster down.
      const response = await fetch(songApi.streamUrl(song.id), { headers: { Range: "bytes=0-1" }, cache: "no-store" });
      response.body?.cancel();
      if (response.ok) return this.audio.error?.code === MediaError.MEDIA_ERR_SRC_NOT_SUPPORTED ? new ApiError(0, "format", "unsupported format") : null;
      let message = response.statusText;
      try { message = (await response.json()).message || message; } catch { /* not JSON */ }
      return new ApiError(response.status, "stream", message);
    } catch {
      return new ApiError(0, "network", "cannot reach the proxy");
    }
  }

  watchdog() {
    const audio = this.audio;
    if (!this.wantPlaying || !this.current || audio.paused && audio.readyState >= 3) return;
    if (Math.abs(audio.currentTime - this.lastProgress.time) > 0.01) {
      this.lastProgress = { time: audio.currentTime, at: Date.now() };
      if (this.troubleSince !== null && Date.now() - this.lastRecoveredAt > 5000) {
        this.troubleSince = null;
        this.attempt = 0;
      }
      return;
    }
    if (Date.now() - this.lastProgress.at > STALL_MS) {
      this.lastProgress.at = Date.now();
      this.recover("the stream stalled");
    }
  }

  wire() {
    const audio = this.audio;
    audio.addEventListener("loadedmetadata", () => {
      if (this.resumeAt !== null) {
        audio.currentTime = this.resumeAt;
        this.resumeAt = null;
        this.lastRecoveredAt = Date.now();
        this.status("");
      }
      this.renderTime();
    });
    audio.addEventListener("timeupdate", () => this.renderTime());
    audio.addEventListener("durationchange", () => this.renderTime());
    audio.addEventListener("play", () => this.renderPlaying());
    audio.addEventListener("pause", () => this.renderPlaying());
    audio.addEventListener("playing", () => { this.status(""); this.renderPlaying(); });
    audio.addEventListener("waiting", () => this.wantPlaying && this.status("Buffering…"));
    audio.addEventListener("ended", () => this.next());
    audio.addEventListener("error", () => {
      if (!this.current || !audio.error) return;
      this.recover(audio.error.message || `media error ${audio.error.code}`);
    });
    audio.addEventListener("volumechange", () => {
      $("volume").value = audio.muted ? 0 : audio.volume;
      $("mute-waves").style.visibility = audio.muted || audio.volume === 0 ? "hidden" : "visible";
      $("mute").setAttribute("aria-label", audio.muted ? "Unmute" : "Mute");
      this.save();
    });
    setInterval(() => this.watchdog(), 1000);

    $("play").addEventListener("click", () => this.toggle());
    $("next").addEventListener("click", () => this.next());
    $("prev").addEventListener("click", () => this.previous());
    $("mute").addEventListener("click", () => { audio.muted = !audio.muted; });
    $("volume").addEventListener("input", (event) => this.setVolume(Number(event.target.value)));
    const seek = $("seek");
    seek.addEventListener("input", () => {
      this.seeking = true;
      $("elapsed").textContent = formatTime(Number(seek.value));
    });
    seek.addEventListener("change", () => {
      this.seeking = false;
      if (this.current) audio.currentTime = Number(seek.value);
    });
    $("queue-clear").addEventListener("click", () => this.clear());
  }

  mediaSession() {
    if (!("mediaSession" in navigator)) return;
    const song = this.current;
    // Artwork by absolute URL: the Media Session may fetch it outside this page.
    const artwork = ARTWORK_SIZES.map((size) => covers.albumUrl(song, size))
      .map((url, i) => url && { src: new URL(url, location.href).href, sizes: `${ARTWORK_SIZES[i]}x${ARTWORK_SIZES[i]}` })
      .filter(Boolean);
    navigator.mediaSession.metadata = song
      ? new MediaMetadata({ title: songTitle(song), artist: song.artist || "", album: song.album || "", artwork })
      : null;
    if (this.sessionWired) return;
    this.sessionWired = true;
    const handlers = {
      play: () => this.play(),
      pause: () => { this.wantPlaying = false; this.audio.pause(); },
      previoustrack: () => this.previous(),
      nexttrack: () => this.next(),
      seekbackward: (details) => this.seekBy(-(details.seekOffset || 10)),
      seekforward: (details) => this.seekBy(details.seekOffset || 10),
      seekto: (details) => { this.audio.currentTime = details.seekTime; },
    };
    for (const [action, handler] of Object.entries(handlers)) {
      try {
        navigator.mediaSession.setActionHandler(action, handler);
      } catch {
        // this browser does not know the action
      }
    }
  }

  // ---- rendering

  changed() {
    this.save();
    this.renderNow();
    this.renderQueue();
    this.dispatchEvent(new Event("change"));
  }

  status(text) {
    if ($("player-status").textContent !== text) $("player-status").textContent = text;
  }

  renderNow() {
    const song = this.current;
    $("now-title").textContent = song ? songTitle(song) : "Nothing playing";
    $("now-artist").textContent = song ? [songArtist(song), song.album].filter(Boolean).join(" — ") : "";
    const cover = $("now-cover");
    const src = covers.albumUrl(song, NOW_COVER_PX * 2);
    if (cover.dataset.src !== (src || "")) {
      cover.dataset.src = src || "";
      cover.replaceChildren(...coverArt(song, NOW_COVER_PX, covers.albumUrl).childNodes);
    }
    document.title = song ? `${songTitle(song)} · Distpotify` : "Distpotify";
    $("prev").disabled = !song;
    $("next").disabled = this.index + 1 >= this.queue.length;
    this.renderTime();
    this.renderPlaying();
  }

  renderPlaying() {
    const playing = !this.audio.paused;
    $("play-icon").setAttribute("d", playing ? PAUSE_PATH : PLAY_PATH);
    $("play").setAttribute("aria-label", playing ? "Pause (Space)" : "Play (Space)");
    if ("mediaSession" in navigator) navigator.mediaSession.playbackState = this.current ? (playing ? "playing" : "paused") : "none";
  }

  renderTime() {
    const duration = this.duration();
    const time = this.resumeAt ?? this.audio.currentTime;
    const seek = $("seek");
    seek.max = Number.isFinite(duration) ? duration : 0;
    if (!this.seeking) {
      seek.value = time;
      $("elapsed").textContent = formatTime(time);
    }
    seek.setAttribute("aria-valuetext", `${formatTime(time)} of ${formatTime(duration)}`);
    $("total").textContent = formatTime(duration);
    if ("mediaSession" in navigator && Number.isFinite(duration) && time <= duration) {
      try {
        navigator.mediaSession.setPositionState({ duration, position: time, playbackRate: this.audio.playbackRate || 1 });
      } catch {
        // an inconsistent state while the next song loads
      }
    }
  }

  renderQueue() {
    $("queue-count").textContent = this.queue.length ? String(this.queue.length) : "";
    $("queue-empty").hidden = this.queue.length > 0;
    $("queue-clear").disabled = !this.queue.length;
    const seconds = this.queue.reduce((sum, song) => sum + (song.duration || 0), 0);
    $("queue-summary").textContent = this.queue.length ? `${plural(this.queue.length, "song")} · ${formatTime(seconds)}` : "";
    $("queue-items").replaceChildren(...this.queue.map((song, position) => {
      const label = `${songTitle(song)} by ${songArtist(song)}`;
      return el("li", { class: position === this.index ? "row current" : "row", "aria-current": position === this.index ? "true" : null },
        el("span", { class: "idx" }, position === this.index ? "▶" : String(position + 1)),
        el("span", { class: "cell-title" },
          coverArt(song, 36, covers.albumUrl),
          el("span", { class: "title-text" },
            el("button", { type: "button", class: "linkish", "aria-label": `Play ${label}`, onclick: () => this.start(position) }, songTitle(song)),
            el("span", { class: "sub" }, songArtist(song)))),
        el("span", { class: "col-time time" }, formatTime(song.duration)),
        el("span", { class: "actions" },
          el("button", { type: "button", class: "icon", "data-move": "-1", "aria-label": `Move ${label} up`, title: "Move up", disabled: position === 0, onclick: () => this.move(position, -1) }, "↑"),
          el("button", { type: "button", class: "icon", "data-move": "1", "aria-label": `Move ${label} down`, title: "Move down", disabled: position === this.queue.length - 1, onclick: () => this.move(position, 1) }, "↓"),
          el("button", { type: "button", class: "icon", "aria-label": `Add ${label} to a playlist`, title: "Add to playlist", onclick: () => this.addToPlaylist(song) }, "+"),
          el("button", { type: "button", class: "icon", "aria-label": `Remove ${label} from the queue`, title: "Remove", onclick: () => this.removeAt(position) }, "×")));
    }));
  }

  // ---- persistence: the queue and volume survive a reload of the page

  save() {
    try {
      localStorage.setItem(STORE, JSON.stringify({ queue: this.queue, index: this.index, volume: this.audio.volume, muted: this.audio.muted }));
    } catch {
      // storage full or disabled: the queue simply does not survive a reload
    }
  }

  restore() {
    try {
      const saved = JSON.parse(localStorage.getItem(STORE) || "null");
      if (!saved) return;
      this.queue = Array.isArray(saved.queue) ? saved.queue : [];
      this.index = Number.isInteger(saved.index) && saved.index < this.queue.length ? saved.index : -1;
      if (Number.isFinite(saved.volume)) this.audio.volume = saved.volume;
      this.audio.muted = Boolean(saved.muted);
    } catch {
      this.queue = [];
    }
  }
}

// What the queue keeps of a song (and stores across reloads).
function slim(song) {
  const { id, title, artist, album, duration, track, mime, album_id, cover_sha256 } = song;
  return { id, title, artist, album, duration, track, mime, album_id, cover_sha256 };
}
