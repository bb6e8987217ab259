// API client for the node's same-origin JSON API (session cookie sent automatically).
// Any 401 sends the browser to /login.

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail || `HTTP ${status}`);
    this.status = status;
    this.detail = detail;
  }
}

let redirecting = false;
let serverOffsetS = 0; // server clock - browser clock, from the Date header of API answers

/** The node's clock in unix seconds (browser clock corrected by the last Date header seen). */
export function serverNow() {
  return Date.now() / 1000 + serverOffsetS;
}

function noteServerDate(res) {
  const d = Date.parse(res.headers.get("Date") || "");
  if (Number.isFinite(d)) {
    const off = d / 1000 - Date.now() / 1000;
    // the header has 1 s resolution: only correct offsets that are clearly real
    serverOffsetS = Math.abs(off) > 2 ? off : 0;
  }
}

export function redirectToLogin() {
  if (redirecting) return;
  redirecting = true;
  window.location.assign("/login");
}

export function isRedirecting() {
  return redirecting;
}

async function errorDetail(res) {
  try {
    const body = await res.json();
    if (typeof body?.detail === "string") return body.detail;
    if (Array.isArray(body?.detail)) {
      // FastAPI validation errors: [{loc, msg, type}]
      return body.detail.map((d) => (d.loc ? `${d.loc.slice(1).join(".")}: ${d.msg}` : d.msg)).join("; ");
    }
    return JSON.stringify(body);
  } catch {
    return res.statusText || `HTTP ${res.status}`;
  }
}

/**
 * fetch() with the contract's conventions. `as`: "json" (default) or "buffer".
 */
export async function request(path, { method = "GET", json, as = "json", signal } = {}) {
  const init = { method, credentials: "same-origin", cache: "no-store", signal, headers: {} };
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  }
  if (as === "json") init.headers.Accept = "application/json";
  const res = await fetch(path, init);
  noteServerDate(res);
  if (res.status === 401) {
    redirectToLogin();
    throw new ApiError(401, "not signed in");
  }
  if (!res.ok) throw new ApiError(res.status, await errorDetail(res));
  if (as === "buffer") return res.arrayBuffer();
  if (res.status === 204) return null;
  return res.json();
}

export const api = {
  series: (limit = 50) => request(`/api/series?limit=${limit}`),
  oneSeries: (id) => request(`/api/series/${encodeURIComponent(id)}`),
  jobs: (limit = 100) => request(`/api/jobs?limit=${limit}`),
  job: (id) => request(`/api/jobs/${encodeURIComponent(id)}`),
  system: () => request("/api/system"),
  feedback: (jobId) => request(`/api/jobs/${encodeURIComponent(jobId)}/feedback`),
  postFeedback: (jobId, body) => request(`/api/jobs/${encodeURIComponent(jobId)}/feedback`, { method: "POST", json: body }),
  buffer: (url, signal) => request(url, { as: "buffer", signal }),
};
