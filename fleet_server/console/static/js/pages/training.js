// Federated training runs: the list, and one run's rounds (accuracy/loss chart,
// participants and failures per round) with its resulting candidate and evaluation.

import { api, can } from '../api.js';
import { h, replace, panel, table, status, fmtTime, fmtNum, notice, toast } from '../dom.js';
import { lineChart } from '../chart.js';
import { link } from '../routes.js';
import { startForm } from './training-form.js';
import { createPanel, openCreated } from './create.js';

const ACTIVE = new Set(['pending', 'running']);

function runsTable(runs) {
  return table([
    { title: 'Run', cell: (r) => h('a', { href: link(`training/${encodeURIComponent(r.id)}`) }, r.id) },
    { title: 'Status', cell: (r) => status(r.status) },
    { title: 'Model', cell: (r) => (r.spec.model ? `${r.spec.model}` : '—') },
    { title: 'Strategy', cell: (r) => r.spec.strategy || '—' },
    { title: 'Rounds', cell: (r) => `${r.completed_rounds}${r.spec.rounds ? ` / ${r.spec.rounds}` : ''}` },
    { title: 'Candidate', cell: candidate },
    { title: 'Accuracy', cell: (r) => fmtNum(r.result.accuracy, 3) },
    { title: 'Started by', cell: (r) => r.created_by },
    { title: 'Created', cell: (r) => fmtTime(r.created_at), class: 'nowrap' },
    { title: 'Detail', cell: (r) => r.detail || '' },
  ], runs, { empty: 'No training run yet (fleetctl train start).' });
}

// A candidate that did not beat its parent is built but never registered: say so.
function candidate(r) {
  const res = r.result || {};
  if (!res.version) return '—';
  if (res.handed_over === false) {
    const why = res.beats_parent === false
      ? `did not beat the parent (${fmtNum(res.accuracy, 3)} vs ${fmtNum(res.baseline_accuracy, 3)})`
      : 'not handed to the registry';
    return h('span', {}, `${res.version} `, h('span', { class: 'badge warn', title: why }, 'not registered'),
      h('span', { class: 'muted' }, ` ${why}`));
  }
  return res.version;
}

function facts(pairs) {
  return h('dl', { class: 'facts' }, pairs.map(([k, v]) => h('div', {}, h('dt', {}, k), h('dd', {}, v ?? '—'))));
}

async function mountRun(root, ctx, id) {
  const head = h('div', { class: 'device-head' });
  const body = h('div');
  const stop = can('operator') ? h('button', { type: 'button', class: 'danger', hidden: true }, 'Stop run') : null;
  if (stop) {
    stop.addEventListener('click', async () => {
      try {
        await api(`/training/runs/${encodeURIComponent(id)}/stop`, { method: 'POST' });
        toast(`run ${id} stopping`);
        refresh();
      } catch (err) { toast(err.message, 'error'); }
    });
  }
  replace(root, h('div', { class: 'page-head' },
    h('h1', {}, h('a', { href: link('training'), class: 'crumb' }, 'Training runs'), ' / ', id), stop), head, body);

  async function refresh() {
    const run = await api(`/training/runs/${encodeURIComponent(id)}`);
    if (!ctx.alive()) return;
    if (stop) stop.hidden = !ACTIVE.has(run.status);
    const rounds = run.rounds || [];
    const ts = rounds.map((r) => r.round);
    const byRound = { width: 560, height: 170, xLabel: (x) => `round ${Math.round(x)}` };
    const res = run.result || {};
    replace(head, facts([
      ['Status', status(run.status)], ['Strategy', run.spec.strategy || '—'], ['Rounds', `${run.completed_rounds}${run.spec.rounds ? ` / ${run.spec.rounds}` : ''}`],
      ['Started by', run.created_by], ['Created', fmtTime(run.created_at)], ['Updated', fmtTime(run.updated_at)],
      ['Candidate', res.version ? [`${res.parent ? `${res.parent} → ` : ''}`, candidate(run)] : '—'],
      ['Candidate accuracy', fmtNum(res.accuracy, 3)], ['Baseline accuracy', fmtNum(res.baseline_accuracy, 3)],
      ['Judged on devices', judged(res)],
      ['Participants', Array.isArray(res.participants) ? String(res.participants.length) : '—'],
      ['Detail', run.detail || '—'],
    ]));
    replace(body,
      panel('Per round',
        h('div', { class: 'charts', id: 'charts' },
          lineChart('Accuracy', ts, [{ name: 'accuracy', values: rounds.map((r) => r.accuracy) }], { ...byRound, fit: true, min: 0, max: 1, empty: 'no round finished yet' }),
          lineChart('Loss', ts, [{ name: 'loss', values: rounds.map((r) => r.loss) }], { ...byRound, fit: true, min: 0, empty: 'no round finished yet' }))),
      panel('Rounds', table([
        { title: 'Round', cell: (r) => String(r.round) },
        { title: 'Accuracy', cell: (r) => fmtNum(r.accuracy, 3) },
        { title: 'Loss', cell: (r) => fmtNum(r.loss, 3) },
        { title: 'Device eval', cell: (r) => deviceEval(r.evaluation || {}) },
        { title: 'By cohort', cell: (r) => cohortsCell(r.evaluation || {}) },
        { title: 'Eligible', cell: (r) => eligibleCell(r.eligibility || {}) },
        { title: 'Participants', cell: (r) => `${r.participants.length}: ${r.participants.join(' ')}` },
        { title: 'Failures', cell: (r) => Object.entries(r.failures).map(([k, v]) => `${k} ${v}`).join(', ') || '—' },
        { title: 'Why (per device)', cell: (r) => Object.entries(r.failed || {}).slice(0, 10).map(([d, why]) => `${d}: ${why}`).join('; ') || '—' },
        { title: 'Rejected', cell: (r) => Object.entries(r.rejected).map(([k, v]) => `${k} ${v}`).join(', ') || '—' },
        { title: 'Bytes out / in', cell: (r) => `${fmtNum(r.bytes_out, 0)} / ${fmtNum(r.bytes_in, 0)}` },
        { title: 'Wall', cell: (r) => `${fmtNum(r.wall_s, 2)} s` },
      ], rounds, { empty: 'No round finished yet.' })),
      h('div', { class: 'cols2' },
        panel('Result (candidate and evaluation)', h('pre', { class: 'code', tabindex: '0' }, JSON.stringify(res, null, 2))),
        panel('Spec', h('pre', { class: 'code', tabindex: '0' }, JSON.stringify(run.spec, null, 2)))));
  }
  await refresh();
  ctx.every(() => refresh().catch(() => {}), 3000);
}

// "97 eligible; offline 2, on_battery 1": who could train this round and why the others could not.
function eligibleCell(e) {
  const out = Object.entries(e).filter(([k]) => k !== 'eligible').map(([k, v]) => `${k} ${v}`);
  if (!('eligible' in e)) return '—';
  return out.length ? `${e.eligible}; ${out.join(', ')}` : String(e.eligible);
}

// Federated evaluation (the devices' own held-out samples): overall, then per cohort.
function deviceEval(e) {
  const parent = e.parent && e.parent.accuracy != null ? ` (parent ${fmtNum(e.parent.accuracy, 3)})` : '';
  if (e.accuracy == null) return parent ? `—${parent}` : '—';
  return `${fmtNum(e.accuracy, 3)} on ${fmtNum(e.examples, 0)} held-out${parent}`;
}

function cohortsCell(e) {
  const cohorts = Object.entries(e.cohorts || {});
  return cohorts.map(([name, c]) => `${name} ${fmtNum(c.accuracy, 3)} (${c.devices})`).join(', ') || '—';
}

function judged(res) {
  const f = res.federated_acceptance;
  if (!f) return '—';
  return `${f.accepted ? 'accepted' : 'refused'}: ${f.reason}`;
}

export async function mount(root, ctx) {
  if (ctx.params.id) return mountRun(root, ctx, ctx.params.id);
  const out = h('div', { class: 'results' });
  replace(root, h('div', { class: 'page-head' }, h('h1', {}, 'Training runs')),
    createPanel('start-training', 'New training run', () => startForm(openCreated('training'))),
    out);
  async function refresh() {
    try {
      const { items: runs } = await api('/training/runs', { query: { limit: 100 } });
      if (ctx.alive()) replace(out, runsTable(runs));
    } catch (err) {
      replace(out, notice(err.message, 'error'));
    }
  }
  await refresh();
  ctx.every(refresh, 5000);
  return undefined;
}
