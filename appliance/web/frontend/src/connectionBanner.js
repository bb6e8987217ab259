// "Connection lost" banner while the event stream is down.

import { clock } from "./format.js";

export class ConnectionBanner {
  constructor(el) {
    this.el = el;
    this.el.hidden = true;
  }

  update({ connected, since }) {
    this.el.hidden = connected;
    this.el.dataset.state = connected ? "connected" : "lost";
    document.body.classList.toggle("offline", !connected);
    if (!connected) {
      this.el.textContent = `Connection to the node lost since ${clock(since)} \u2013 reconnecting\u2026 The page may be out of date.`;
    }
  }
}
