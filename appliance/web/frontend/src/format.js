// Pure formatting helpers (no DOM).

const ESC = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

/** Escape text for use inside HTML text or a quoted attribute. */
export function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => ESC[c]);
}

export const DASH = "\u2013";

/** A value or a dash when it is missing. */
export function orDash(value) {
  return value === null || value === undefined || value === "" ? DASH : String(value);
}

/**
 * DICOM PN ("FAMILY^GIVEN^MIDDLE^PREFIX^SUFFIX", optional "=" groups) as "FAMILY, GIVEN MIDDLE".
 */
export function personName(pn) {
  if (!pn) return "(no name)";
  const alpha = String(pn).split("=")[0];
  const [family = "", given = "", middle = "", prefix = "", suffix = ""] = alpha.split("^").map((s) => s.trim());
  const rest = [prefix, given, middle].filter(Boolean).join(" ");
  let out = family && rest ? `${family}, ${rest}` : family || rest;
  if (suffix) out += `, ${suffix}`;
  return out || "(no name)";
}

/** DICOM DA "YYYYMMDD" as "YYYY-MM-DD" (or as given). */
export function dicomDate(da) {
  if (!da) return DASH;
  const m = /^(\d{4})(\d{2})(\d{2})$/.exec(String(da));
  return m ? `${m[1]}-${m[2]}-${m[3]}` : String(da);
}

const pad = (n) => String(n).padStart(2, "0");

/** Unix seconds as local "HH:MM:SS" (today) or "YYYY-MM-DD HH:MM". */
export function clock(unixS, now = Date.now() / 1000) {
  if (unixS === null || unixS === undefined) return DASH;
  const d = new Date(unixS * 1000);
  const n = new Date(now * 1000);
  const time = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  if (d.toDateString() === n.toDateString()) return time;
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

/** "12 s ago", "5 min ago", "3 h ago", "2 d ago". */
export function ago(unixS, now = Date.now() / 1000) {
  if (unixS === null || unixS === undefined) return "";
  const s = Math.max(0, now - unixS);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

/** Seconds as "0.42 s" / "12.3 s" / "2 min 05 s". */
export function seconds(s) {
  if (s === null || s === undefined || !Number.isFinite(s)) return DASH;
  if (s < 10) return `${s.toFixed(2)} s`;
  if (s < 120) return `${s.toFixed(1)} s`;
  return `${Math.floor(s / 60)} min ${pad(Math.round(s % 60))} s`;
}

/** Bytes as "412 GB" / "3.4 MB". */
export function bytes(n) {
  if (n === null || n === undefined || !Number.isFinite(n)) return DASH;
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  let v = n;
  while (v >= 1000 && i < units.length - 1) {
    v /= 1000;
    i += 1;
  }
  return `${v >= 100 || i === 0 ? Math.round(v) : v.toFixed(1)} ${units[i]}`;
}

/** Volume in ml: "2100.5 ml" (1 decimal below 10 000). */
export function ml(v) {
  if (v === null || v === undefined || !Number.isFinite(v)) return DASH;
  return v >= 10000 ? `${Math.round(v)} ml` : `${v.toFixed(1)} ml`;
}

export function modelText(model) {
  if (!model || !model.name) return DASH;
  return model.version ? `${model.name} ${model.version}` : model.name;
}

export function rgbCss(color) {
  const [r = 200, g = 200, b = 200] = Array.isArray(color) ? color : [];
  return `rgb(${r | 0}, ${g | 0}, ${b | 0})`;
}
