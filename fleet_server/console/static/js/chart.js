// Line charts drawn as SVG by hand: no library, no network.  One chart = a time
// axis shared by a few series; gaps (null) break a line instead of faking a value,
// unless the series is sparse by nature (opts.sparse: drift is tested every few
// batches), where a line joins the points across the batches that carry none and
// every point gets a dot.

import { h, fmtClock, fmtNum } from './dom.js';

export const PALETTE = ['#2563eb', '#dc2626', '#059669', '#d97706', '#7c3aed', '#0891b2', '#db2777'];

const M = { top: 10, right: 24, bottom: 20, left: 40 };

function tick(v, step) {
  if (Math.abs(v) >= 1e6) return `${Number((v / 1e6).toFixed(1))}M`;
  if (Math.abs(v) >= 1e3) return `${Number((v / 1e3).toFixed(1))}k`;
  // Enough decimals that neighbouring ticks differ (a 0.94-0.98 axis needs three).
  const digits = step > 0 ? Math.min(4, Math.max(2, 1 - Math.floor(Math.log10(step)))) : 2;
  return fmtNum(v, digits);
}

// opts.fit: the y range hugs the data (with a margin) inside [opts.min, opts.max], so a
// change from 0.95 to 0.97 is visible instead of flat against a 0-1 axis.
function fitted(all, lo = -Infinity, hi = Infinity) {
  const a = Math.min(...all);
  const b = Math.max(...all);
  const span = Math.max(b - a, Math.abs(b) * 0.02, 1e-6);
  return [Math.max(lo, a - span * 0.25), Math.min(hi, b + span * 0.25)];
}

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

// ts: seconds (or any increasing x with opts.xLabel); series: [{name, values, color?}];
// opts: {unit, max, min, fit, width, height, xLabel, sparse}.
// The viewBox is about the size the chart is shown at, so its text stays readable.
export function lineChart(title, ts, series, opts = {}) {
  const W = opts.width || 400;
  const H = opts.height || 150;
  const plotW = W - M.left - M.right;
  const plotH = H - M.top - M.bottom;
  const all = series.flatMap((s) => s.values).filter((v) => v !== null && v !== undefined);
  const t0 = ts.length ? ts[0] : 0;
  const t1 = ts.length > 1 ? ts[ts.length - 1] : t0 + 60;
  const [yMin, yMax] = opts.fit && all.length
    ? fitted(all, opts.min, opts.max)
    : [opts.min ?? 0, opts.max ?? niceMax(Math.max(...all, (opts.min ?? 0) + 1e-9))];
  const x = (t) => M.left + ((t - t0) / (t1 - t0 || 1)) * plotW;
  const y = (v) => M.top + plotH - ((v - yMin) / (yMax - yMin || 1)) * plotH;

  const svg = h('svg:svg', {
    viewBox: `0 0 ${W} ${H}`, class: 'chart-svg', role: 'img',
    'aria-label': `${title}: ${series.map((s) => s.name).join(', ')}`,
  });
  for (let i = 0; i <= 4; i += 1) {
    const v = yMin + ((yMax - yMin) * i) / 4;
    svg.append(h('svg:line', { x1: M.left, x2: W - M.right, y1: y(v), y2: y(v), class: 'gridline' }));
    svg.append(h('svg:text', { x: M.left - 6, y: y(v) + 3, class: 'tick', 'text-anchor': 'end' },
      tick(v, (yMax - yMin) / 4)));
  }
  const ticks = Math.min(opts.xLabel ? 10 : 5, Math.max(1, ts.length - 1));
  for (let i = 0; i <= ticks; i += 1) {
    const t = t0 + ((t1 - t0) * i) / ticks;
    svg.append(h('svg:text', { x: x(t), y: H - 6, class: 'tick', 'text-anchor': 'middle' },
      opts.xLabel ? opts.xLabel(t) : fmtClock(t, t1 - t0 < 600)));
  }
  let drawn = 0;
  series.forEach((s, i) => {
    const color = s.color || PALETTE[i % PALETTE.length];
    let d = '';
    let pen = false;
    let points = 0;
    s.values.forEach((v, k) => {
      if (v === null || v === undefined || k >= ts.length) { pen = pen && !!opts.sparse; return; }
      const px = x(ts[k]).toFixed(1);
      const py = y(Math.min(v, yMax)).toFixed(1);
      d += `${pen ? 'L' : 'M'}${px},${py}`;
      if (opts.sparse) svg.append(h('svg:circle', { cx: px, cy: py, r: 2, fill: color, class: 'dot' }));
      pen = true;
      points += 1;
    });
    if (points === 1 && !opts.sparse) {  // a lone value: draw a dot so it shows
      const k = s.values.findIndex((v) => v !== null && v !== undefined);
      svg.append(h('svg:circle', { cx: x(ts[k]), cy: y(s.values[k]), r: 2.5, fill: color }));
    }
    if (points) {
      svg.append(h('svg:path', {
        d, stroke: color, class: 'line', dataset: { series: s.name, points: String(points) },
      }));
    }
    drawn += points;
  });
  const last = (s) => [...s.values].reverse().find((v) => v !== null && v !== undefined);
  const legend = h('ul', { class: 'legend' }, series.map((s, i) => h('li', {},
    h('span', { class: 'swatch', 'aria-hidden': 'true', dataset: { color: i } }),
    `${s.name} `, h('b', {}, `${fmtNum(last(s))}${opts.unit ? ` ${opts.unit}` : ''}`))));
  legend.querySelectorAll('.swatch').forEach((el, i) => {
    el.style.setProperty('background', series[i].color || PALETTE[i % PALETTE.length]);
  });
  return h('figure', { class: 'chart', dataset: { points: String(drawn) } },
    h('figcaption', {}, title, opts.unit ? h('span', { class: 'unit' }, ` (${opts.unit})`) : null),
    drawn ? svg : h('div', { class: 'nodata' }, opts.empty || 'no data in this window'),
    drawn ? legend : null);
}

// Horizontal bars for a distribution: [{key, total, online}] with an optional link per row.
export function bars(rows, { href } = {}) {
  const max = Math.max(1, ...rows.map((r) => r.total));
  const list = h('ul', { class: 'bars' }, rows.map((r) => {
    const fill = h('span', { class: 'fill' });
    const on = h('span', { class: 'fill on' });
    fill.style.setProperty('width', `${(100 * r.total) / max}%`);
    on.style.setProperty('width', `${(100 * r.online) / max}%`);
    const url = href && href(r);
    const label = url ? h('a', { href: url }, r.key) : r.key;
    return h('li', {},
      h('span', { class: 'bar-label' }, label),
      h('span', { class: 'bar', 'aria-hidden': 'true' }, fill, on),
      h('span', { class: 'bar-value', title: `${r.online} of ${r.total} devices online` },
        `${r.online}/${r.total}`));
  }));
  // The figures are online/total: said once above the bars rather than on every row.
  return h('div', {}, h('p', { class: 'bars-key muted' }, 'online / devices'), list);
}
