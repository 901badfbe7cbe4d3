// Small DOM helpers shared by the views: element building, time formatting, toasts.

export const $ = (id) => document.getElementById(id);

// el("button", {class: "x", onclick: f, "aria-label": "y", style: {color: "red"}}, "text", child...)
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "class") node.className = value;
    // Through the CSSOM: the Content-Security-Policy refuses inline style attributes.
    else if (name === "style") Object.assign(node.style, value);
    else if (name === "dataset") Object.assign(node.dataset, value);
    else if (value === true) node.setAttribute(name, "");
    else node.setAttribute(name, value);
  }
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

export function formatTime(seconds) {
  if (!Number.isFinite(seconds) || seconds < 0) return "–:––";
  const whole = Math.floor(seconds);
  const h = Math.floor(whole / 3600);
  const m = Math.floor((whole % 3600) / 60);
  const s = String(whole % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${s}` : `${m}:${s}`;
}

export const fold = (text) => (text || "").toLocaleLowerCase();

export const songTitle = (song) => song.title || "Untitled";
export const songArtist = (song) => song.artist || "Unknown artist";
export const songAlbum = (song) => song.album || "";

// A song's album cover, `size` CSS pixels square (fetched at twice that for sharp screens),
// or an empty placeholder the stylesheet draws a note in. Decorative: the title says it all.
export function coverArt(song, size, url, className = "") {
  const holder = el("span", { class: `cover ${className}`.trim(), "aria-hidden": "true" });
  const src = url(song, size * 2);
  if (src) {
    const image = el("img", { src, alt: "", width: size, height: size, loading: "lazy", decoding: "async" });
    image.addEventListener("error", () => image.remove());
    holder.append(image);
  }
  return holder;
}

export function plural(count, one, many = `${one}s`) {
  return `${count.toLocaleString()} ${count === 1 ? one : many}`;
}

// A message at the bottom of the page; errors stay longer and are announced at once.
export function toast(message, { error = false, ms } = {}) {
  const close = el("button", { type: "button", class: "toast-close", "aria-label": "Dismiss" }, "×");
  const item = el("div", { class: error ? "toast error" : "toast", role: error ? "alert" : "status" },
    el("span", {}, message), close);
  const remove = () => item.remove();
  close.addEventListener("click", remove);
  $("toasts").append(item);
  setTimeout(remove, ms ?? (error ? 10_000 : 4_000));
  return item;
}

export function errorText(error) {
  return typeof error?.describe === "function" ? error.describe() : String(error?.message || error);
}

export const reportError = (what) => (error) => {
  if (error?.name === "AbortError") return;
  toast(`${what}: ${errorText(error)}`, { error: true });
};

export const debounce = (fn, ms) => {
  let timer;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
};

export function isTyping(target) {
  return target instanceof HTMLElement &&
    (target.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName));
}
