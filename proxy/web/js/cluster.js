// The cluster as the proxy sees it (/proxy/status) and as one replica sees its peers
// (/status: heads, heartbeats), polled live, with a log of what changed: watch a failover.

import { cluster as api } from "./api.js";
import { $, el, errorText, plural } from "./ui.js";

const FAST_MS = 1000;
const SLOW_MS = 4000;
const MAX_EVENTS = 60;

const headOf = (value) => Array.isArray(value) ? value : typeof value === "string" ? value.split("-").map(Number) : null;

function lag(head, leaderHead) {
  if (!head || !leaderHead) return "";
  if (head.join() === leaderHead.join()) return "in sync";
  if (head[0] === leaderHead[0] && head[1] === leaderHead[1] && leaderHead[2] > head[2]) {
    return `${plural(leaderHead[2] - head[2], "write")} behind`;
  }
  return `behind (epoch ${head[0]} of ${leaderHead[0]})`;
}

export class ClusterView {
  constructor(account) {
    this.account = account;
    this.visible = false;
    this.proxy = null;
    this.replica = null;
    this.events = [];
    this.timer = 0;
    this.turns = 0;
  }

  start() {
    this.poll();
  }

  // Where accounts are required (--auth on), /proxy/status answers admins only: nobody else
  // asks it (a refusal every few seconds), and the pill says so rather than "unreachable".
  get allowed() {
    return !this.account.required || this.account.isAdmin;
  }

  setVisible(visible) {
    const wasVisible = this.visible;
    this.visible = visible;
    if (visible && !wasVisible) {
      clearTimeout(this.timer);
      this.poll();
    }
  }

  async poll() {
    clearTimeout(this.timer);
    const turn = ++this.turns; // a poll started meanwhile (a login, the view shown) goes on
    if (!this.allowed) {
      this.proxy = this.replica = this.error = null;
      this.renderPill();
      if (this.visible) this.render();
      return; // until the account changes (main.js starts this again)
    }
    try {
      const [proxy, replica] = await Promise.all([
        api.proxy(),
        this.visible ? api.replica().catch(() => null) : Promise.resolve(this.replica),
      ]);
      if (turn !== this.turns) return;
      this.note(this.proxy, proxy);
      this.proxy = proxy;
      this.replica = replica;
      this.error = null;
    } catch (error) {
      if (turn !== this.turns) return;
      if (!this.error) this.log(`The proxy does not answer: ${errorText(error)}`, "bad");
      this.error = error;
    }
    this.renderPill();
    if (this.visible) this.render();
    this.timer = setTimeout(() => this.poll(), this.visible ? FAST_MS : SLOW_MS);
  }

  // ---- what changed between two views of the proxy

  note(before, after) {
    if (!before) {
      this.log(after.leader ? `Leader is node ${after.leader.node_id} (epoch ${after.leader.epoch})` : "No leader known yet");
      return;
    }
    const was = before.leader?.node_id ?? null;
    const now = after.leader?.node_id ?? null;
    if (was !== now) {
      this.log(now === null ? `No leader: node ${was} is gone, an election is under way`
        : `New leader: node ${now} (epoch ${after.leader.epoch})`, now === null ? "bad" : "good");
    }
    const old = new Map(before.backends.map((b) => [b.http, b]));
    for (const backend of after.backends) {
      const prior = old.get(backend.http);
      const name = `node ${backend.node_id ?? backend.http}`;
      if (!prior) {
        this.log(`Discovered ${name} (${backend.http})`);
        continue;
      }
      if (prior.healthy && !backend.healthy) this.log(`${name} is down: ${backend.last_error || "no answer"}`, "bad");
      if (!prior.healthy && backend.healthy) this.log(`${name} is healthy again`, "good");
      if (prior.state !== backend.state && backend.state) this.log(`${name} is ${backend.state}`);
    }
    const resumed = (after.counters?.resumes ?? 0) - (before.counters?.resumes ?? 0);
    if (resumed > 0) this.log(`The proxy resumed ${plural(resumed, "stream")} from another replica`, "good");
  }

  log(text, tone = "") {
    this.events.unshift({ at: new Date(), text, tone });
    this.events.length = Math.min(this.events.length, MAX_EVENTS);
  }

  // ---- rendering

  renderPill() {
    const pill = $("cluster-pill");
    if (!this.allowed) {
      pill.textContent = "cluster: admins";
      pill.className = "pill";
      return;
    }
    if (this.error || !this.proxy) {
      pill.textContent = "proxy unreachable";
      pill.className = "pill bad";
      return;
    }
    const { leader, backends } = this.proxy;
    const healthy = backends.filter((b) => b.healthy).length;
    pill.textContent = `${leader ? `leader ${leader.node_id}` : "no leader"} · ${healthy}/${backends.length} up`;
    pill.className = `pill ${!leader ? "bad" : healthy < backends.length ? "warn" : "good"}`;
  }

  render() {
    const proxy = this.proxy;
    if (!proxy) {
      $("cluster-leader").textContent = !this.allowed ? "The cluster view is for admins."
        : this.error ? `The proxy does not answer: ${errorText(this.error)}` : "leader: …";
      return;
    }
    $("cluster-leader").textContent = proxy.leader
      ? `leader: node ${proxy.leader.node_id} · epoch ${proxy.leader.epoch}`
      : "leader: none (election under way)";
    $("cluster-leader").className = proxy.leader ? "leader" : "leader bad";

    const replica = this.replica;
    const peers = new Map((replica?.peers || []).map((peer) => [peer.node_id, peer]));
    const heads = new Map([...peers].map(([id, peer]) => [id, headOf(peer.head)]));
    if (replica) heads.set(replica.node_id, headOf(replica.head));
    const leaderHead = proxy.leader ? heads.get(proxy.leader.node_id) : null;

    $("cluster-rows").replaceChildren(...proxy.backends.map((backend) => {
      const peer = peers.get(backend.node_id);
      const self = replica?.node_id === backend.node_id;
      const health = backend.healthy
        ? el("span", { class: "badge good" }, "healthy")
        : el("span", { class: "badge bad", title: backend.last_error || "" }, backend.last_error ? `down: ${backend.last_error}` : "down");
      const heartbeat = self ? "answered /status" : peer ? (peer.up === false ? "silent" : `${peer.last_seen_ms} ms ago`) : "—";
      return el("tr", { class: backend.healthy ? "" : "down", dataset: { node: backend.node_id ?? "" } },
        el("th", { scope: "row" }, backend.node_id === null ? "?" : String(backend.node_id)),
        // A replica that is down shows what it was when last heard from, and says so.
        el("td", {}, backend.healthy
          ? el("span", { class: `badge ${backend.role === "leader" ? "leader" : ""}` }, backend.role || "—")
          : `was ${backend.role || "unknown"}`),
        el("td", {}, backend.healthy ? backend.state || "—" : "—"),
        el("td", {}, backend.epoch ?? "—"),
        el("td", {}, health),
        el("td", {}, backend.healthy ? lag(heads.get(backend.node_id), leaderHead) || "—" : "—"),
        el("td", {}, heartbeat),
        el("td", {}, `${backend.forwarded}${backend.failures ? ` (${backend.failures} failed)` : ""}`),
        el("td", { class: "muted" }, backend.http));
    }));

    const sync = replica?.sync;
    $("cluster-sync").hidden = !replica;
    if (replica) {
      const parts = [`Heads and heartbeats as node ${replica.node_id} sees them.`];
      if (sync) parts.push(`Its last sync: ${sync.phase}, ${sync.chunks_done}/${sync.chunks_total} chunks.`);
      $("cluster-sync").replaceChildren(el("p", { class: "muted" }, parts.join(" ")),
        sync && sync.phase !== "DONE" && sync.chunks_total ? el("progress", { max: sync.chunks_total, value: sync.chunks_done, "aria-label": "Sync progress" }) : "");
    }

    const counters = proxy.counters || {};
    $("cluster-counters").replaceChildren(...Object.entries(counters).map(([name, value]) =>
      el("div", {}, el("dt", {}, name.replace(/_/g, " ")), el("dd", {}, String(value)))));
    $("cluster-events").replaceChildren(...this.events.map((event) =>
      el("li", { class: event.tone }, el("time", { datetime: event.at.toISOString() }, event.at.toLocaleTimeString()), " ", event.text)));
  }
}
