// Uploads: files from the picker or dropped anywhere on the page, sent one after another,
// each with its progress bar (bytes sent) and a clear word when the cluster refuses it.

import { upload } from "./api.js";
import { $, el, errorText, songArtist, songTitle, toast } from "./ui.js";

const REASONS = {
  413: "too large for this cluster",
  415: "not an audio file the server can read",
  503: "no leader could take the write (the cluster is electing one); try again in a moment",
};

function sizeText(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  const units = ["KiB", "MiB", "GiB"];
  let value = bytes / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

export class Uploader {
  constructor({ onUploaded }) {
    this.onUploaded = onUploaded;
    this.waiting = [];
    this.busy = false;
    $("file-input").addEventListener("change", (event) => {
      this.add([...event.target.files]);
      event.target.value = "";
    });
    this.wireDrop();
  }

  wireDrop() {
    const overlay = $("drop-overlay");
    let depth = 0;
    const hasFiles = (event) => [...(event.dataTransfer?.types || [])].includes("Files");
    window.addEventListener("dragenter", (event) => {
      if (!hasFiles(event)) return;
      depth += 1;
      overlay.hidden = false;
    });
    window.addEventListener("dragleave", (event) => {
      if (!hasFiles(event)) return;
      depth = Math.max(0, depth - 1);
      if (!depth) overlay.hidden = true;
    });
    window.addEventListener("dragover", (event) => {
      if (!hasFiles(event)) return;
      event.preventDefault();
      event.dataTransfer.dropEffect = "copy";
    });
    window.addEventListener("drop", (event) => {
      if (!hasFiles(event)) return;
      event.preventDefault();
      depth = 0;
      overlay.hidden = true;
      if (location.hash !== "#/upload") location.hash = "#/upload";
      this.add([...event.dataTransfer.files]);
    });
  }

  add(files) {
    for (const file of files) {
      const bar = el("progress", { max: file.size || 1, value: 0, "aria-label": `Upload of ${file.name}` });
      const state = el("span", { class: "upload-state" }, "waiting");
      const item = el("li", { class: "upload", dataset: { file: file.name } },
        el("span", { class: "upload-name" }, file.name, el("span", { class: "muted" }, ` · ${sizeText(file.size)}`)),
        bar, state);
      $("upload-list").prepend(item);
      this.waiting.push({ file, bar, state, item });
    }
    this.pump();
  }

  async pump() {
    if (this.busy) return;
    this.busy = true;
    while (this.waiting.length) await this.send(this.waiting.shift());
    this.busy = false;
  }

  async send({ file, bar, state, item }) {
    state.textContent = "uploading";
    try {
      const { song, duplicate } = await upload(file, {
        onProgress: (sent, total) => {
          bar.max = total || 1;
          bar.value = sent;
          state.textContent = sent < total ? `${Math.floor((100 * sent) / total)} %` : "storing on the cluster…";
        },
        onRetry: () => { state.textContent = "the cluster is electing a leader; retrying…"; },
      });
      bar.value = bar.max;
      item.classList.add("done");
      const what = `${songTitle(song)} — ${songArtist(song)}`;
      state.replaceChildren(duplicate ? "already in the library: " : "added: ",
        el("a", { href: `#/library` }, what));
      toast(duplicate ? `“${songTitle(song)}” was already in the library` : `Added “${songTitle(song)}”`);
      this.onUploaded(song);
    } catch (error) {
      item.classList.add("failed");
      const reason = REASONS[error.status];
      state.textContent = `Rejected: ${errorText(error)}`;
      state.setAttribute("role", "alert");
      toast(`${file.name}: ${reason || errorText(error)}`, { error: true });
    }
  }
}
