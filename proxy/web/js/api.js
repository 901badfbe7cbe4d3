// The music API of the proxy (same origin, docs/architecture.md 3.3): JSON calls, uploads with
// progress, and the replica that answered each one (X-Served-By).

export const PAGE_MAX = 500; // the replicas' largest page of /songs

// Fired with {node, path} after every answer that names the replica which served it.
export const served = new EventTarget();

// Fired ("unauthorized", {path}) when a call outside /auth/ is answered 401: the session is
// missing, expired or ended (a password change, logout-all). The page asks for a login and
// leaves the <audio> element alone.
export const sessions = new EventTarget();

function noteUnauthorized(status, path) {
  if (status === 401 && !path.startsWith("/auth/")) {
    sessions.dispatchEvent(new CustomEvent("unauthorized", { detail: { path } }));
  }
}

export class ApiError extends Error {
  constructor(status, code, message, retryAfter = null) {
    super(message);
    this.status = status; // 0: the proxy could not be reached
    this.code = code;
    this.retryAfter = retryAfter; // seconds, from Retry-After (a 429 or 503)
  }

  describe() {
    return this.status ? `${this.message} (${this.status})` : this.message;
  }
}

const RETRY_503_FOR_MS = 30_000;

function noteServedBy(headerValue, path) {
  if (headerValue) served.dispatchEvent(new CustomEvent("served", { detail: { node: headerValue, path } }));
}

async function errorFrom(response) {
  let code = `http_${response.status}`;
  let message = response.statusText || `HTTP ${response.status}`;
  try {
    const body = await response.json();
    if (body && typeof body === "object") {
      code = body.error || code;
      message = body.message || body.error || message;
    }
  } catch {
    // not JSON: keep the status line
  }
  const retryAfter = Number.parseInt(response.headers.get("Retry-After") ?? "", 10);
  return new ApiError(response.status, code, message, Number.isFinite(retryAfter) ? retryAfter : null);
}

export function retryDelayMs(retryAfter, attempt) {
  const seconds = Number.parseFloat(retryAfter);
  const base = Number.isFinite(seconds) && seconds >= 0 ? seconds * 1000 : 500 * 2 ** attempt;
  return Math.min(Math.max(base, 250), 5000);
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// A write's Idempotency-Key (an RFC 8941 string, as the IETF draft writes it): one per write,
// the same on each of its retries, so a write sent again after a lost answer lands once.
const idempotencyKey = () => `"${uuid4()}"`;

// One API call; JSON in and out. A 503 on a write (no leader during an election) is retried
// under the same Idempotency-Key after Retry-After for up to 30 s, telling `onRetry` so the
// page can say why it waits. Reads need no re-reading after our own writes: the proxy's
// session cookie makes them wait for those writes (read your writes). The account's session
// is the distpotify_session cookie (HttpOnly, set by POST /auth/login): sent with every
// same-origin request, <audio> streams included; no Authorization header is ever added (a
// write authenticated by cookie passes the replicas' CSRF rule by the Origin Chromium sends).
export async function call(path, { method = "GET", json, signal, onRetry } = {}) {
  const init = { method, signal, credentials: "same-origin", headers: { Accept: "application/json" } };
  if (method !== "GET") init.headers["Idempotency-Key"] = idempotencyKey();
  if (json !== undefined) {
    init.body = JSON.stringify(json);
    init.headers["Content-Type"] = "application/json";
  }
  const started = Date.now();
  for (let attempt = 0; ; attempt++) {
    let response;
    try {
      response = await fetch(path, init);
    } catch (error) {
      if (error.name === "AbortError") throw error;
      throw new ApiError(0, "network", "Cannot reach the Distpotify proxy");
    }
    noteServedBy(response.headers.get("X-Served-By"), path);
    if (response.status === 503 && method !== "GET" && Date.now() - started < RETRY_503_FOR_MS) {
      const error = await errorFrom(response);
      onRetry?.(error, attempt);
      await sleep(retryDelayMs(response.headers.get("Retry-After"), attempt));
      continue;
    }
    noteUnauthorized(response.status, path);
    if (!response.ok) throw await errorFrom(response);
    if (response.status === 204) return null;
    return response.json();
  }
}

export const songs = {
  search: ({ q, artist, album, sort, limit = 100, offset = 0 } = {}, signal) => {
    const query = new URLSearchParams({ limit: String(limit), offset: String(offset) });
    if (q) query.set("q", q);
    if (sort && sort !== "newest") query.set("sort", sort);
    if (artist) query.set("artist", artist);
    if (album) query.set("album", album);
    return call(`/songs?${query}`, { signal });
  },
  get: (id) => call(`/songs/${encodeURIComponent(id)}`),
  remove: (id, onRetry) => call(`/songs/${encodeURIComponent(id)}`, { method: "DELETE", onRetry }),
  streamUrl: (id) => `/songs/${encodeURIComponent(id)}/stream`,
};

// Every song matching `filter`, page after page (for sorting, artist and album views).
export async function allSongs(filter = {}, signal) {
  const found = [];
  for (;;) {
    const page = await songs.search({ ...filter, limit: PAGE_MAX, offset: found.length }, signal);
    found.push(...page.songs);
    if (page.songs.length < PAGE_MAX || found.length >= page.total) return found;
  }
}

// A random (v4) UUID. crypto.randomUUID exists only in secure contexts, and the player may be
// opened over plain HTTP on another machine's address.
export function uuid4() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

export const playlists = {
  list: () => call("/playlists").then((body) => body.playlists),
  get: (id) => call(`/playlists/${encodeURIComponent(id)}`).then((body) => body.playlist),
  create: (name, onRetry) =>
    call("/playlists", { method: "POST", json: { name }, onRetry }).then((body) => body.playlist),
  rename: (id, name, onRetry) =>
    call(`/playlists/${encodeURIComponent(id)}`, { method: "PATCH", json: { name }, onRetry })
      .then((body) => body.playlist),
  setPublic: (id, isPublic, onRetry) =>
    call(`/playlists/${encodeURIComponent(id)}`, { method: "PATCH", json: { public: isPublic }, onRetry })
      .then((body) => body.playlist),
  remove: (id, onRetry) => call(`/playlists/${encodeURIComponent(id)}`, { method: "DELETE", onRetry }),
  addItem: (id, songId, onRetry) =>
    call(`/playlists/${encodeURIComponent(id)}/items`, { method: "POST", json: { song_id: songId }, onRetry })
      .then((body) => body.item),
  removeItem: (id, itemId, onRetry) =>
    call(`/playlists/${encodeURIComponent(id)}/items/${encodeURIComponent(itemId)}`, { method: "DELETE", onRetry }),
};

// Accounts (docs/architecture.md 3.7). me() resolves the user, or null for no session (401).
export const auth = {
  me: () => call("/auth/me").then((body) => body.user, (error) => {
    if (error.status === 401) return null;
    throw error;
  }),
  login: (username, password) =>
    call("/auth/login", { method: "POST", json: { username, password } }).then((body) => body.user),
  logout: () => call("/auth/logout", { method: "POST" }),
  changePassword: (oldPassword, password) =>
    call("/auth/password", { method: "PUT", json: { old_password: oldPassword, password } }),
};

// Admins only: the cluster's accounts.
export const users = {
  list: () => call("/users").then((body) => body.users),
  create: (username, password, role, onRetry) =>
    call("/users", { method: "POST", json: { username, password, role }, onRetry }).then((body) => body.user),
  update: (id, changes, onRetry) =>
    call(`/users/${encodeURIComponent(id)}`, { method: "PATCH", json: changes, onRetry }),
  remove: (id, onRetry) => call(`/users/${encodeURIComponent(id)}`, { method: "DELETE", onRetry }),
};

// Cover art (issue 18): an album's cover, resized by the replicas to fit size x size. Only
// asked for songs that carry a cover of their own (cover_sha256), so their album has one:
// a missing picture would be a 404 in the console on every row.
export const covers = {
  albumUrl: (song, size) => (song?.album_id && song?.cover_sha256
    ? `/albums/${encodeURIComponent(song.album_id)}/cover?size=${size}` : null),
};

// The account's Subsonic API keys (OpenSubsonic apiKey), for the apps on phones and desktops.
// A key's secret is answered once, by the create; the list has names and dates only.
export const apiKeys = {
  list: () => call("/auth/apikeys").then((body) => body.keys),
  create: (name, onRetry) =>
    call("/auth/apikeys", { method: "POST", json: { name }, onRetry }),
  revoke: (id, onRetry) =>
    call(`/auth/apikeys/${encodeURIComponent(id)}`, { method: "DELETE", onRetry }),
};

export const cluster = {
  proxy: () => call("/proxy/status"),
  replica: () => call("/status"),
};

const AUDIO_TYPES = {
  mp3: "audio/mpeg", ogg: "audio/ogg", oga: "audio/ogg", opus: "audio/ogg", flac: "audio/flac",
  wav: "audio/wav", m4a: "audio/mp4", aac: "audio/aac",
};

export function audioTypeOf(file) {
  if (file.type.startsWith("audio/")) return file.type;
  const extension = file.name.split(".").pop().toLowerCase();
  return AUDIO_TYPES[extension] || null;
}

// POST /songs with upload progress (fetch cannot report it). Audio goes as the raw body with
// its type; anything else as multipart, so the replica itself says why it refuses it (415).
// Resolves {song, duplicate}; rejects with ApiError. 503 (an election) is retried, under the
// same Idempotency-Key.
export function upload(file, { onProgress, onRetry } = {}) {
  const type = audioTypeOf(file);
  const started = Date.now();
  const key = idempotencyKey();
  const attempt = (n) => new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", type ? `/songs?${new URLSearchParams({ filename: file.name })}` : "/songs");
    xhr.responseType = "json";
    xhr.setRequestHeader("Accept", "application/json");
    xhr.setRequestHeader("Idempotency-Key", key);
    xhr.upload.onprogress = (event) => onProgress?.(event.loaded, event.lengthComputable ? event.total : file.size);
    xhr.onload = () => {
      noteServedBy(xhr.getResponseHeader("X-Served-By"), "/songs");
      noteUnauthorized(xhr.status, "/songs");
      const body = xhr.response;
      if (xhr.status === 200 || xhr.status === 201) {
        resolve({ song: body.song, duplicate: xhr.status === 200 });
        return;
      }
      const error = new ApiError(xhr.status, body?.error || `http_${xhr.status}`,
        body?.message || xhr.statusText || `HTTP ${xhr.status}`);
      if (xhr.status === 503 && Date.now() - started < RETRY_503_FOR_MS) {
        onRetry?.(error, n);
        setTimeout(() => attempt(n + 1).then(resolve, reject),
          retryDelayMs(xhr.getResponseHeader("Retry-After"), n));
        return;
      }
      reject(error);
    };
    xhr.onerror = () => reject(new ApiError(0, "network",
      "The connection closed during the upload (the proxy is unreachable, or the file is too large)"));
    if (type) {
      xhr.setRequestHeader("Content-Type", type);
      xhr.send(file);
    } else {
      const form = new FormData();
      form.append("file", file, file.name);
      xhr.send(form);
    }
  });
  return attempt(0);
}
