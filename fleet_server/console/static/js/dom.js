// Small DOM helpers: build elements without innerHTML (no injection from device data).

export function h(tag, attrs = {}, ...children) {
  const svg = tag.startsWith('svg:');
  const el = svg
    ? document.createElementNS('http://www.w3.org/2000/svg', tag.slice(4))
    : document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith('on') && typeof value === 'function') {
      el.addEventListener(key.slice(2), value);
    } else if (key === 'class') {
      el.setAttribute('class', value);
    } else if (key === 'dataset') {
      Object.assign(el.dataset, value);
    } else if (!svg && key in el && typeof value !== 'string') {
      el[key] = value;
    } else {
      el.setAttribute(key, value === true ? '' : String(value));
    }
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

export function replace(el, ...children) {
  return append(clear(el), children);
}

const pad = (n) => String(n).padStart(2, '0');

export function fmtTime(ts) {
  if (ts === null || ts === undefined) return '—';
  const d = new Date(ts * 1000);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

export function fmtClock(ts, seconds = false) {
  const d = new Date(ts * 1000);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}${seconds ? `:${pad(d.getSeconds())}` : ''}`;
}

export function ago(ts, now = Date.now() / 1000) {
  if (ts === null || ts === undefined) return 'never';
  const s = Math.max(0, now - ts);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

export function fmtNum(v, digits = 2) {
  if (v === null || v === undefined || Number.isNaN(v)) return '—';
  if (Math.abs(v) >= 1000) return Math.round(v).toLocaleString('en');
  return Number(v.toFixed(digits)).toString();
}

export function badge(text, kind = '') {
  return h('span', { class: `badge ${kind}`.trim() }, text);
}

export function presence(online) {
  return h('span', { class: `presence ${online ? 'on' : 'off'}` },
    h('span', { class: 'dot', 'aria-hidden': 'true' }), online ? 'online' : 'offline');
}

const TONE = {
  ok: 'good', in_sync: 'good', enrolled: 'good', committed: 'good', done: 'good',
  accepted: 'info', pending: 'info', starting: 'info', sent: 'info', downloading: 'info',
  degraded: 'warn', drifted: 'warn', no_desired: '', probation: 'info',
  completed: 'good', succeeded: 'good', passed: 'good', canary: 'info', wave: 'info',
  dispatching: 'info', settling: 'info', gating: 'info', finishing: 'info', queued: '',
  paused: 'warn', halted: 'warn', rolling_back: 'warn', offline: 'warn', aborted: 'bad',
  updating: 'info', reverting: 'warn', 'waiting for data': 'warn',
  failed: 'bad', revoked: 'bad', rolled_back: 'bad', rejected: 'bad', denied: 'bad', error: 'bad',
};

export function status(text) {
  return badge(text ? String(text).replace(/_/g, ' ') : '—', TONE[text] ?? '');
}

// A table from column specs: {title, cell(row) -> node|text, class?}.
export function table(columns, rows, { caption, empty = 'Nothing here.' } = {}) {
  const head = h('thead', {}, h('tr', {}, columns.map((c) =>
    h('th', { scope: 'col', class: c.class }, c.title))));
  const body = h('tbody', {}, rows.length
    ? rows.map((r) => h('tr', {}, columns.map((c) => h('td', { class: c.class }, c.cell(r)))))
    : h('tr', {}, h('td', { colspan: columns.length, class: 'empty' }, empty)));
  return h('table', { class: 'grid' }, caption ? h('caption', {}, caption) : null, head, body);
}

export function field(label, control, hint) {
  const id = control.id || `f-${Math.random().toString(36).slice(2, 9)}`;
  control.id = id;
  return h('div', { class: 'field' }, h('label', { for: id }, label), control,
    hint ? h('small', { class: 'hint' }, hint) : null);
}

export function panel(title, ...children) {
  return h('section', { class: 'panel', 'aria-label': title },
    h('h2', {}, title), ...children);
}

export function notice(message, kind = 'info') {
  return h('p', { class: `notice ${kind}`, role: kind === 'error' ? 'alert' : 'status' }, message);
}

let toastTimer = null;
export function toast(message, kind = 'info') {
  const el = document.getElementById('toast');
  if (!el) return;
  el.textContent = message;
  el.className = `toast show ${kind}`;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { el.className = 'toast'; }, 4000);
}
