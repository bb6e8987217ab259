// Live events: one EventSource on /api/events ("event: series" carries the GET /api/series JSON).
// EventSource reconnects by itself after a dropped stream; after a refused connection (HTTP error:
// readyState CLOSED) we probe the API (a 401 there goes to /login) and reconnect with backoff.

import { api, isRedirecting } from "./api.js";

export class LiveEvents {
  /**
   * @param {{onSeries: (data: object) => void, onStatus: (status: {connected: boolean, since: number|null}) => void}} handlers
   */
  constructor(url, { onSeries, onStatus }) {
    this.url = url;
    this.onSeries = onSeries;
    this.onStatus = onStatus;
    this.source = null;
    this.connected = false;
    this.lostSince = null;
    this.retryMs = 1000;
    this.retryTimer = null;
    this.unloading = false;
    window.addEventListener("pagehide", () => {
      this.unloading = true;
      this.close();
    });
  }

  start() {
    this.close();
    const src = new EventSource(this.url, { withCredentials: true });
    this.source = src;
    src.addEventListener("series", (ev) => {
      let data;
      try {
        data = JSON.parse(ev.data);
      } catch (e) {
        console.warn("isonode: bad series event", e);
        return;
      }
      this.retryMs = 1000;
      this.setConnected(true);
      this.onSeries(data);
    });
    src.addEventListener("open", () => {
      this.retryMs = 1000;
      this.setConnected(true);
    });
    src.addEventListener("error", () => {
      if (this.unloading || src !== this.source) return;
      this.setConnected(false);
      if (src.readyState === EventSource.CLOSED) this.recover();
      // readyState CONNECTING: the browser reconnects by itself.
    });
  }

  async recover() {
    this.close();
    try {
      await api.system(); // 401 -> /login; other errors just mean "not reachable yet"
    } catch {
      /* keep retrying */
    }
    if (isRedirecting() || this.unloading) return;
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.start(), this.retryMs);
    this.retryMs = Math.min(this.retryMs * 2, 15000);
  }

  setConnected(ok) {
    if (ok === this.connected && !(ok === false && this.lostSince === null)) return;
    this.connected = ok;
    this.lostSince = ok ? null : (this.lostSince ?? Date.now() / 1000);
    this.onStatus({ connected: ok, since: this.lostSince });
  }

  close() {
    clearTimeout(this.retryTimer);
    if (this.source) {
      const s = this.source;
      this.source = null;
      s.close();
    }
  }
}
