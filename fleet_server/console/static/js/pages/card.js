// One model version's card: what it is (flavours, inputs, quantization), where it came from
// (lineage, federated run), and how it does in the fleet: accuracy per slice with its 95%
// interval (worst device first), per hour, latency and memory per hardware class.

import { api } from '../api.js';
import { h, replace, panel, table, fmtTime, fmtNum, notice } from '../dom.js';
import { link } from '../routes.js';

const pct = (v) => (v === null || v === undefined ? '—' : `${fmtNum(v * 100, 1)}%`);
const interval = (s) => (s.low === null || s.low === undefined ? '—' : `${pct(s.low)} – ${pct(s.high)}`);

function facts(rows) {
  return h('dl', { class: 'facts' }, rows.map(([k, v]) => [h('dt', {}, k), h('dd', {}, v ?? '—')]));
}

function provenance(p) {
  const run = p.run_id ? h('a', { href: link(`training/${encodeURIComponent(p.run_id)}`) }, p.run_id) : null;
  const dp = p.dp ? (p.dp.local_epsilon ? `local ε ${fmtNum(p.dp.local_epsilon, 2)}` : p.dp.central ? 'central' : 'none') : null;
  return facts([
    ['Source', p.source], ['Parent', p.parent], ['Run', run], ['Strategy', p.strategy],
    ['Rounds', p.rounds], ['Clients', p.clients], ['Differential privacy', dp],
  ]);
}

const SLICES = [
  { title: 'Slice', cell: (s) => h('code', {}, s.slice) },
  { title: 'Devices', cell: (s) => String(s.devices) },
  { title: 'Inferences', cell: (s) => String(s.inferences) },
  { title: 'Labels', cell: (s) => String(s.labels) },
  { title: 'Accuracy', cell: (s) => pct(s.accuracy) },
  { title: '95% interval', cell: interval, class: 'nowrap' },
];

// The label-free estimate, and in its own words why it is not to be trusted when it is not.
function estimateLine(est) {
  if (!est) return null;
  const value = est.accuracy === null || est.accuracy === undefined ? 'none'
    : `${pct(est.accuracy)} (${pct(est.low)} – ${pct(est.high)}) from ${est.answers} answers`;
  return h('p', { class: est.trusted ? '' : 'muted' }, h('b', {}, 'Estimated accuracy without labels (CBPE): '), value,
    est.trusted ? '' : ` — not trusted: ${est.reasons.join('; ')}`);
}

function render(card, name, version) {
  const d = card.model_details;
  const p = card.model_parameters;
  const q = card.quantitative_analysis;
  const e = card.edge;
  const agree = e.int8_vs_float;
  const md = `/api/v1/models/${encodeURIComponent(name)}/${encodeURIComponent(version)}/card?format=md`;
  return [
    h('div', { class: 'page-head' }, h('h1', {}, `Model card: ${name} ${version}`),
      h('a', { href: md, class: 'muted' }, 'Markdown')),
    panel('Model details', facts([
      ['Overview', d.overview], ['Registered', fmtTime(d.registered_at)],
      ['Owners', d.owners.map((o) => o.name).join(', ')], ['Labels', p.labels.join(', ')],
      ['Inputs', h('code', {}, JSON.stringify(p.input_format))],
    ])),
    panel('Flavours', table([
      { title: 'Flavour', cell: (f) => f.flavor },
      { title: 'Quantization', cell: (f) => f.quantization.method },
      { title: 'Bytes', cell: (f) => String(f.model_bytes) },
      { title: 'sha256', cell: (f) => h('code', {}, f.sha256.slice(0, 16)) },
    ], p.flavors)),
    panel('Quantitative analysis (fleet, last 24 h)',
      estimateLine(q.estimated_accuracy),
      table(SLICES, [...q.performance_metrics, ...q.slices], { empty: 'No telemetry from this version.' }),
      h('h3', {}, 'Accuracy per hour'),
      table([{ title: 'Hour', cell: (t) => fmtTime(t.hour) }, ...SLICES.slice(3)], q.timeline,
        { empty: 'No labels yet.' })),
    panel('Edge', facts([
      ['Runtimes', e.runtimes.map((r) => `${r.flavor} (${r.runtime}${r.opset ? `, opset ${r.opset}` : ''})`).join(', ')],
      ['int8 vs float', agree && agree.agreement !== null ? `${pct(agree.agreement)} top-1 agreement on ${agree.vectors} vectors` : 'one flavour only'],
      ['Hardware', e.hardware.length ? e.hardware.map((x) => `${x.hardware}: p95 ${fmtNum(x.p95_ms, 2)} ms, RSS ${fmtNum(x.rss_mb, 1)} MB (${x.devices} devices)`).join('; ') : null],
      ['Drift reference', e.drift_reference_sha256.map((x) => h('code', {}, x.slice(0, 16), ' '))],
      ['Devices running', String(e.devices_running)],
    ])),
    panel('Provenance', provenance(e.provenance)),
    panel('Considerations', h('ul', {}, card.considerations.limitations.map((l) => h('li', {}, l.description)))),
  ];
}

export async function mount(root, ctx) {
  const { name, version } = ctx.params;
  async function refresh() {
    try {
      const card = await api(`/models/${encodeURIComponent(name)}/${encodeURIComponent(version)}/card`);
      if (ctx.alive()) replace(root, ...render(card, name, version));
    } catch (err) {
      replace(root, notice(err.message, 'error'));
    }
  }
  await refresh();
  ctx.every(refresh, 30000);
}
