// Fleet overview: presence, versions, tags, health, alerts, fleet telemetry; refreshed live.

import { api, ApiError } from '../api.js';
import { h, replace, panel, table, ago, fmtNum, notice, status } from '../dom.js';
import { bars, lineChart } from '../chart.js';
import { link, ROUTES } from '../routes.js';
import { ACTIVE, progress, rolloutLink } from './rollouts.js';

const small = { width: 300, height: 130 };

const ALERTS = [
  ['drift', 'Input drift', (s) => `changed from the device's own baseline (older agents: PSI > ${s.drift_threshold})`,
    (a) => `${a.detail}${a.value === null ? '' : ` · ${fmtNum(a.value)}`}`],
  ['silent', 'Silent devices', (s) => `no message for ${Math.round(s.silent_s / 60)} min`,
    (a) => `${a.detail}, last seen ${ago(a.value)}`],
  ['failed_updates', 'Failed updates', () => 'reported update failed or rolled back', (a) => a.detail],
  ['spool_drops', 'Spool drops', (s) => `in the last ${Math.round(s.window_s / 60)} min`,
    (a) => `${fmtNum(a.value, 0)} batches dropped`],
];

const selectorFor = {
  model: (k) => `model:${k}`,
  firmware: (k) => `firmware:${k}`,
  tag: (k) => `tag:${k}`,
  health: (k) => `health:${k}`,
};

function kpi(label, value, kind = '', href = null) {
  const body = [h('span', { class: 'kpi-value' }, value), h('span', { class: 'kpi-label' }, label)];
  return href ? h('a', { class: `kpi ${kind}`, href }, body) : h('div', { class: `kpi ${kind}` }, body);
}

function distribution(title, rows, kind) {
  return panel(title, rows.length
    ? bars(rows, { href: (r) => (r.key === '(none)' ? null : link('devices', { selector: selectorFor[kind](r.key) })) })
    : h('p', { class: 'muted' }, 'no devices report this yet'));
}

function alertPanel(summary) {
  const cards = ALERTS.map(([key, title, rule, describe]) => {
    const list = summary.alerts[key];
    return h('div', { class: `alert-card ${list.total ? 'firing' : 'quiet'}`, dataset: { alert: key } },
      h('h3', {}, title, ' ', h('span', { class: 'count' }, String(list.total))),
      h('p', { class: 'rule' }, rule(summary)),
      list.total
        ? h('ul', {}, list.items.slice(0, 6).map((a) => h('li', {},
          h('a', { href: link(`devices/${encodeURIComponent(a.device_id)}`) }, a.device_id), ' ',
          h('span', { class: 'muted' }, describe(a)))),
          list.total > 6 ? h('li', { class: 'muted' }, `and ${list.total - 6} more`) : null)
        : h('p', { class: 'muted' }, 'none'));
  });
  return panel('Alerts', h('div', { class: 'alerts' }, cards));
}

// Drift, accuracy and latency per slice (tag value or device) and model version, from the
// drift windows' histograms merged on the server; the worst slices are marked.
function cohortPanel(views, by) {
  const pct = (v) => (v === null ? '–' : `${(100 * v).toFixed(0)}%`);
  const body = views.length ? views.map((v) => table([
    { title: by === 'device' ? 'Device' : `${by}=`, cell: (r) => h('span', {}, r.key, ' ',
      r.key === v.worst_drift ? h('span', { class: 'badge warn', dataset: { worst: 'drift' } }, 'most drifted') : null,
      r.key === v.worst_accuracy ? h('span', { class: 'badge warn', dataset: { worst: 'accuracy' } }, 'least accurate') : null) },
    { title: 'Devices', cell: (r) => String(r.devices), class: 'num' },
    { title: 'Rows tested', cell: (r) => fmtNum(r.samples, 0), class: 'num' },
    { title: 'Drift vs rest (JS)', cell: (r) => (r.effect === null ? '–' : fmtNum(r.effect)), class: 'num' },
    { title: 'p', cell: (r) => (r.p_value === null ? '–' : r.p_value.toExponential(1)), class: 'num' },
    { title: 'Joint (PCA, JS)', cell: (r) => (r.multivariate_effect == null ? '–' : fmtNum(r.multivariate_effect)), class: 'num' },
    { title: 'Joint p', cell: (r) => (r.multivariate_p_value == null ? '–' : r.multivariate_p_value.toExponential(1)), class: 'num' },
    { title: 'Alerting', cell: (r) => String(r.alerting), class: 'num' },
    { title: 'Accuracy (95% CI)', cell: (r) => (r.accuracy === null ? 'no labels'
      : `${pct(r.accuracy)} (${pct(r.accuracy_low)}–${pct(r.accuracy_high)}, n=${r.labels})`) },
    { title: 'p95 ms', cell: (r) => (r.p95_ms === null ? '–' : fmtNum(r.p95_ms)), class: 'num' },
  ], v.slices, { caption: `${v.model} ${v.version}` })) : [h('p', { class: 'muted' }, 'no drift windows in the last hour')];
  return panel('Cohorts: drift, accuracy, latency (last hour)', h('div', { id: 'cohorts' }, ...body));
}

async function sectionCard(path) {
  const r = ROUTES.find((x) => x.path === path);
  try {
    await api(r.probe);
    return h('p', {}, h('a', { href: `#/${path}` }, `Open ${r.title.toLowerCase()}`));
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) {
      return h('p', { class: 'muted unavailable' }, 'not available on this server');
    }
    return notice(err.message, 'error');
  }
}

// Active rollouts with their progress; null when this server runs no rollouts API.
async function activeRollouts() {
  let rows;
  try {
    ({ items: rows } = await api('/rollouts', { query: { limit: 200 } }));
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) return null;
    return notice(err.message, 'error');
  }
  const active = rows.filter((r) => ACTIVE.includes(r.status));
  if (!active.length) {
    return h('p', { class: 'muted', id: 'active-rollouts' }, 'No active rollout. ',
      h('a', { href: link('rollouts') }, 'All rollouts'));
  }
  return h('ul', { class: 'active-rollouts', id: 'active-rollouts' }, active.map((r) => h('li', {},
    h('div', {}, rolloutLink(r), ' ', status(r.status), ' ', h('code', {}, r.artifact)), progress(r))));
}

export async function mount(root, ctx) {
  const body = h('div', { class: 'overview' });
  const updated = h('span', { class: 'muted updated', 'aria-live': 'off' });
  replace(root, h('div', { class: 'page-head' }, h('h1', {}, 'Fleet overview'), updated), body);
  const training = await sectionCard('training');

  let cohorts = null;
  let tick = 0;
  async function refresh() {
    const now = Date.now() / 1000;
    const [s, fleet, active] = await Promise.all([
      api('/console/summary'),
      api('/telemetry/aggregate', { query: { selector: 'all', since: now - 3600, until: now } }),
      activeRollouts(),
    ]);
    if (cohorts === null || tick % 6 === 0) {  // merging histograms costs more: every 30 s
      const by = s.by_tag.length ? s.by_tag[0].key.split('=')[0] : 'device';
      cohorts = cohortPanel(await api('/console/cohorts', { query: { by } }), by);
    }
    tick += 1;
    const rollouts = active ?? await sectionCard('rollouts');
    if (!ctx.alive()) return;
    const offline = (s.by_state.enrolled || 0) - s.online;
    // The minute still in progress holds a fraction of its events: drawn, it would drop
    // every per-minute line towards zero at the right edge.  Only complete minutes count.
    const minutes = fleet.rollups.filter((r) => r.minute + 60 <= s.now);
    const ts = minutes.map((r) => r.minute);
    const col = (k) => minutes.map((r) => r[k]);
    replace(body,
      h('div', { class: 'kpis' },
        kpi('devices', String(s.total), '', link('devices')),
        kpi('online', String(s.online), 'good', link('devices', { selector: 'online' })),
        kpi('offline', String(Math.max(0, offline)), offline > 0 ? 'warn' : '',
          link('devices', { selector: 'offline and state:enrolled' })),
        kpi('pending enrollment', String(s.by_state.pending || 0), '', link('devices', { selector: 'state:pending' })),
        kpi('revoked', String(s.by_state.revoked || 0), '', link('devices', { selector: 'state:revoked' })),
        kpi('alerts', String(ALERTS.reduce((n, [k]) => n + s.alerts[k].total, 0)),
          ALERTS.some(([k]) => s.alerts[k].total) ? 'bad' : 'good')),
      alertPanel(s),
      h('div', { class: 'cols3' },
        distribution('By model version', s.by_model, 'model'),
        distribution('By firmware', s.by_firmware, 'firmware'),
        distribution('By health', s.by_health, 'health')),
      h('div', { class: 'cols2' },
        distribution('By tag', s.by_tag, 'tag'),
        panel('Fleet telemetry, last hour (complete minutes)',
          h('div', { class: 'charts2' },
            lineChart('Inferences per minute', ts, [{ name: 'inferences', values: col('inferences') }], small),
            lineChart('Latency p95 (mean) / p99 (max)', ts, [
              { name: 'p95', values: col('latency_p95_ms') },
              { name: 'p99 max', values: col('latency_p99_max_ms') }], { ...small, unit: 'ms' }),
            lineChart('CPU', ts, [{ name: 'cpu', values: col('cpu_percent') }], { ...small, unit: '%', max: 100 }),
            lineChart('Drift (largest score)', ts, [{ name: 'drift', values: col('drift_max') }],
              { ...small, sparse: true })))),
      cohorts,
      h('div', { class: 'cols2' },
        panel('Active rollouts', rollouts),
        panel('Training runs', training)));
    updated.textContent = `updated ${new Date().toLocaleTimeString('en-GB')}`;
  }
  await refresh();
  ctx.every(() => refresh().catch(() => {}), 5000);
}
