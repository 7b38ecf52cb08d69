// One device: twin (desired vs reported, with the differences marked), live charts,
// recent commands and update history.  Operators also get the actions.

import { api, can } from '../api.js';
import { h, replace, panel, table, field, status, presence, ago, fmtTime, fmtNum, notice, toast } from '../dom.js';
import { lineChart } from '../chart.js';
import { link } from '../routes.js';

const WINDOWS = [[900, '15 min'], [3600, '1 hour'], [6 * 3600, '6 hours'], [86400, '24 hours']];

const ref = (r) => (r ? `${r.name}@${r.version}` : null);

export function twinRows(twin) {
  const d = twin.desired || {};
  const r = twin.reported || {};
  const rows = [
    ['version', d.version ?? null, r.desired_version ?? null, (a, b) => b !== null && a !== null && b >= a],
    ['model', ref(d.model), ref(r.model), (a, b) => a === b],
    ['firmware', d.firmware ? d.firmware.version : null, r.firmware ? r.firmware.version : null, (a, b) => a === b],
  ];
  const out = rows.map(([key, want, have, same]) => ({
    key, want, have, state: want === null ? 'unset' : same(want, have) ? 'same' : 'differs',
  }));
  const applied = r.desired_version !== undefined && d.version !== undefined && r.desired_version >= d.version;
  for (const [k, v] of Object.entries(d.config || {})) {
    out.push({ key: `config.${k}`, want: JSON.stringify(v), have: applied ? 'applied' : 'not yet', state: applied ? 'same' : 'differs' });
  }
  return out;
}

function twinPanel(twin) {
  const rows = twinRows(twin);
  const mark = { same: ['✓ in sync', 'good'], differs: ['≠ differs', 'warn'], unset: ['not set', ''] };
  return panel('Twin',
    h('p', {}, 'Status ', status(twin.status), twin.reported_at ? ` · reported ${ago(twin.reported_at)}` : ''),
    twin.refusal ? h('p', { class: 'notice error', role: 'alert', id: 'twin-refusal' },
      `The device refused desired version ${twin.desired.version}: ${twin.refusal}`) : null,
    table([
      { title: 'Field', cell: (x) => h('code', {}, x.key) },
      { title: 'Desired', cell: (x) => x.want ?? '—' },
      { title: 'Reported', cell: (x) => x.have ?? '—' },
      { title: 'Diff', cell: (x) => h('span', { class: `badge ${mark[x.state][1]}`, dataset: { diff: x.state } }, mark[x.state][0]) },
    ], rows),
    h('details', {}, h('summary', {}, 'Raw twin JSON'),
      h('div', { class: 'cols2' },
        h('pre', { class: 'code', tabindex: '0', 'aria-label': 'desired state' }, JSON.stringify(twin.desired, null, 2)),
        h('pre', { class: 'code', tabindex: '0', 'aria-label': 'reported state' }, JSON.stringify(twin.reported, null, 2)))));
}

function charts(s) {
  const ts = s.ts;
  const features = Object.entries(s.drift_features).map(([name, values]) => ({ name, values }));
  return h('div', { class: 'charts' },
    lineChart('Latency', ts, [
      { name: 'p50', values: s.latency_p50_ms }, { name: 'p95', values: s.latency_p95_ms },
      { name: 'p99', values: s.latency_p99_ms }], { unit: 'ms', empty: 'no inference in this window' }),
    lineChart('Throughput', ts, [{ name: 'inferences/s', values: s.throughput_per_s }],
      { unit: '/s', empty: 'no inference in this window' }),
    lineChart('CPU and memory', ts, [
      { name: 'cpu', values: s.cpu_percent }, { name: 'memory', values: s.mem_percent }], { unit: '%', max: 100 }),
    lineChart('Confidence (mean top-1)', ts, [{ name: 'confidence', values: s.confidence_mean }],
      { max: 1, empty: 'no inference in this window' }),
    s.drift_reference.some((v) => v !== null)
      ? lineChart('Drift: baseline vs reference (Jensen-Shannon distance)', ts, [
        { name: 'vs own baseline', values: s.drift_baseline },
        { name: 'vs package reference', values: s.drift_reference },
        ...(s.drift_joint && s.drift_joint.some((v) => v !== null)
          ? [{ name: 'joint (PCA)', values: s.drift_joint }] : []),
        { name: 'alert', values: s.drift_alert.map((a) => (a === null ? null : a ? 1 : 0)) }],
      { max: 1, sparse: true, empty: 'no drift tests in this window' })
      : null,
    lineChart(s.drift_reference.some((v) => v !== null) ? 'Drift per feature' : 'Drift per feature (PSI)', ts,
      [{ name: 'max', values: s.drift_score }, ...features],
      { sparse: true, empty: 'no drift sketches in this window' }),
    lineChart('Spool', ts, [
      { name: 'queued', values: s.spool_depth }, { name: 'dropped total', values: s.spool_dropped }]));
}

function actions(id, twin, refresh) {
  const name = h('input', { name: 'command', required: true, pattern: '[a-z][a-z0-9_]{0,31}', value: 'ping' });
  const args = h('input', { name: 'args', value: '{}', spellcheck: false });
  const cmd = h('form', { class: 'inline-form', 'aria-label': 'Send a command' },
    field('Command', name), field('Arguments (JSON)', args), h('button', { type: 'submit' }, 'Send command'));
  cmd.addEventListener('submit', async (e) => {
    e.preventDefault();
    try {
      const sent = await api(`/devices/${encodeURIComponent(id)}/commands`, {
        method: 'POST', body: { name: name.value.trim(), args: JSON.parse(args.value || '{}') },
      });
      toast(`command ${sent.id} sent`);
      refresh();
    } catch (err) { toast(err.message, 'error'); }
  });
  const key = h('input', { name: 'config-key', required: true, placeholder: 'telemetry_interval_s' });
  const value = h('input', { name: 'config-value', required: true, placeholder: '5' });
  const cfg = h('form', { class: 'inline-form', 'aria-label': 'Set desired config' },
    field('Config key', key), field('Value', value, 'JSON scalar; text if it does not parse'),
    h('button', { type: 'submit' }, 'Set desired'));
  cfg.addEventListener('submit', async (e) => {
    e.preventDefault();
    let v = value.value.trim();
    try { v = JSON.parse(v); } catch { /* plain text */ }
    const d = twin().desired || {};
    const art = (a) => (a ? { name: a.name, version: a.version, target: a.target } : null);
    try {
      await api(`/devices/${encodeURIComponent(id)}/twin/desired`, {
        method: 'PUT', body: { model: art(d.model), firmware: art(d.firmware), config: { ...(d.config || {}), [key.value.trim()]: v } },
      });
      toast('desired state stored and sent');
      refresh();
    } catch (err) { toast(err.message, 'error'); }
  });
  const revoke = h('button', { type: 'button', class: 'danger' }, 'Revoke device');
  revoke.addEventListener('click', async () => {
    if (!window.confirm(`Revoke ${id}? Its certificate stops working at once.`)) return;
    try {
      await api(`/devices/${encodeURIComponent(id)}/revoke`, { method: 'POST' });
      toast(`${id} revoked`);
      refresh();
    } catch (err) { toast(err.message, 'error'); }
  });
  return panel('Actions', h('div', { class: 'actions' }, cmd, cfg, h('div', {}, revoke)));
}

export async function mount(root, ctx) {
  const id = ctx.params.id;
  const path = `/devices/${encodeURIComponent(id)}`;
  let windowS = Number(ctx.query.get('window')) || 900;
  let twin = null;
  const head = h('div', { class: 'device-head' });
  const twinBox = h('div');
  const chartBox = h('div', { id: 'charts' });
  const cmdBox = h('div');
  const updBox = h('div');
  const win = h('select', { name: 'window' }, WINDOWS.map(([s, label]) => h('option', { value: s, selected: s === windowS }, label)));
  win.addEventListener('change', () => { windowS = Number(win.value); refresh(); });

  replace(root,
    h('div', { class: 'page-head' },
      h('h1', {}, h('a', { href: link('devices'), class: 'crumb' }, 'Devices'), ' / ', id)),
    head,
    h('div', { class: 'cols-device' },
      h('div', {}, panel('Telemetry', h('div', { class: 'toolbar' }, field('Window', win)), chartBox)),
      h('div', {}, twinBox, can('operator') ? actions(id, () => twin, () => refresh()) : null)),
    h('div', { class: 'cols2' }, panel('Recent commands', cmdBox), panel('Update history', updBox)));

  async function refresh() {
    const [d, t, series, commands, updates] = await Promise.all([
      api(path), api(`${path}/twin`),
      api(`/console${path}/series`, { query: { window_s: windowS } }),
      api(`${path}/commands`, { query: { limit: 20 } }),
      api(`/console${path}/updates`, { query: { limit: 50 } }),
    ]);
    if (!ctx.alive()) return;
    twin = t;
    replace(head, h('dl', { class: 'facts' },
      [['Presence', presence(d.online)], ['State', status(d.state)], ['Health', d.health ? status(d.health) : '—'],
        ['Model', d.model || '—'], ['Firmware', d.firmware || '—'], ['Agent', d.agent_version || '—'],
        ['Last seen', ago(d.last_seen)], ['Enrolled', fmtTime(d.enrolled_at)],
        ['Certificate until', fmtTime(d.cert_not_after)],
        ['Tags', Object.entries(d.tags).map(([k, v]) => `${k}=${v}`).join(' ') || '—']]
        .map(([k, v]) => h('div', {}, h('dt', {}, k), h('dd', {}, v)))));
    replace(twinBox, twinPanel(t));
    replace(chartBox, charts(series), h('p', { class: 'muted' }, `${series.ts.length} batches`));
    replace(cmdBox, table([
      { title: 'Sent', cell: (c) => fmtTime(c.created_at), class: 'nowrap' },
      { title: 'Command', cell: (c) => h('code', {}, c.name) },
      { title: 'By', cell: (c) => c.actor },
      { title: 'Status', cell: (c) => status(c.status) },
      { title: 'Detail', cell: (c) => c.detail || '' },
    ], commands.items, { empty: 'No commands yet.' }));
    replace(updBox, table([
      { title: 'When', cell: (u) => fmtTime(u.ts), class: 'nowrap' },
      { title: 'Kind', cell: (u) => u.kind },
      { title: 'Target', cell: (u) => h('code', {}, u.target) },
      { title: 'Phase', cell: (u) => status(u.phase) },
      { title: 'Progress', cell: (u) => `${fmtNum(100 * u.progress, 0)} %` },
      { title: 'Error', cell: (u) => u.error || '' },
    ], updates, { empty: 'No update reported yet.' }));
  }
  await refresh();
  ctx.every(() => refresh().catch(() => {}), 3000);
}
