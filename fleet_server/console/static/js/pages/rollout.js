// One rollout: progress per wave, gate figures against their thresholds, device outcomes
// (paged), the event log, and the operator's verbs.  Refreshed live while it runs.

import { api, can } from '../api.js';
import { h, replace, panel, table, status, fmtTime, fmtNum, notice, toast } from '../dom.js';
import { link } from '../routes.js';
import { ACTIVE, meter } from './rollouts.js';

const PAGE = 25;
const VERBS = {  // verb -> statuses it applies to (the server decides; this only hides noise)
  pause: ['pending', 'canary', 'wave'],
  resume: ['paused', 'halted'],
  abort: ACTIVE,
  rollback: [...ACTIVE, 'completed', 'aborted'],
};

// A wave still "waiting" when its rollout has ended will never start: it was not run.
function waveState(w, rollout) {
  return w.state === 'waiting' && !ACTIVE.includes(rollout) ? 'not run' : w.state;
}

function waveRow(w, deadline, rollout) {
  const done = w.counts.succeeded || 0;
  const failed = (w.counts.failed || 0) + (w.counts.rolled_back || 0);
  const state = waveState(w, rollout);
  return h('div', { class: 'wave', dataset: { wave: String(w.index), state } },
    h('span', { class: 'bar-label' }, h('b', {}, w.name), ' ', status(state)),
    meter(done, w.size, failed, `${w.name} progress`),
    h('span', { class: 'bar-value', title: `${done} of ${w.size} devices updated` },
      `${done}/${w.size} updated`, failed ? ` · ${failed} failed` : ''),
    h('div', {},  // the last grid column: what the wave waits for, then its gates
      w.waiting ? h('p', { class: 'waiting', role: 'status' }, w.waiting, deadline
        ? h('span', { class: 'muted' }, ` · without it the gates fail at ${fmtTime(deadline)}`) : null) : null,
      gates(w.gates)));
}

// The shadow step: the canary runs the new version beside the active model before any switch.
function shadowRow(step, waiting, deadline) {
  return h('div', { class: 'wave', dataset: { wave: 'shadow', state: step.state } },
    h('span', { class: 'bar-label' }, h('b', {}, 'shadow'), ' ', status(step.state)),
    h('span', { class: 'muted' }, `${fmtNum(step.duration_s, 1)} s beside the active model`),
    h('span', { class: 'bar-value' }, step.started_at ? `since ${fmtTime(step.started_at)}` : ''),
    h('div', {},
      waiting ? h('p', { class: 'waiting', role: 'status' }, waiting, deadline
        ? h('span', { class: 'muted' }, ` · without it the gates fail at ${fmtTime(deadline)}`) : null) : null,
      gates(step.gates)));
}

// A gate short of evidence is neither passed nor failed: it waits (older results lack the flag).
function verdict(g) {
  if (g.waiting) return 'waiting';
  return g.passed ? 'pass' : 'fail';
}

// How many more observations a waiting gate needs (a comparison: its shorter side).
function moreNeeded(g) {
  let short = g.needed - (g.samples || 0);
  if (g.parent_samples !== null && g.parent_samples !== undefined) short = Math.max(short, g.needed - g.parent_samples);
  return Math.max(0, short);
}

function evidence(g) {
  if (g.samples === null || g.samples === undefined) return null;
  let text = g.needed ? `${g.samples}/${g.needed} ${g.unit}` : `${g.samples} ${g.unit}`;
  if (g.parent_samples !== null && g.parent_samples !== undefined) {
    text += `; parent ${g.parent_samples}`;
    if (g.low !== null && g.low !== undefined) text += `; bounds ${fmtNum(g.low, 3)}..${fmtNum(g.high, 3)}`;
  }
  return h('span', { class: 'muted evidence' }, ` (${text})`,
    g.waiting && g.needed ? h('b', { class: 'needs' }, ` needs ${moreNeeded(g)} more ${g.unit === 'labelled answers' ? 'labels' : g.unit}`) : null);
}

function gates(list) {
  if (!list) return h('span', { class: 'muted gates' }, 'gates not evaluated yet');
  if (!list.length) return h('span', { class: 'muted gates' }, 'no gates');
  const tone = { pass: 'ok', fail: 'failed', waiting: 'waiting for data' };
  return h('ul', { class: 'gates' }, list.map((g) => h('li', { class: verdict(g) },
    h('code', {}, g.metric), ` ${fmtNum(g.value, 4)} ${g.op} ${fmtNum(g.threshold, 4)}`, evidence(g), ' ',
    status(tone[verdict(g)]), g.note && !g.waiting ? h('span', { class: 'muted' }, ` ${g.note}`) : null)));
}

// How the plan judges gates that need traffic (plans stored before the rule carry the defaults).
function evidenceRule(p) {
  if (p.gates_allow_no_data) return 'a gate with no data passes (allowed for fleets without traffic)';
  const timeout = p.gate_timeout_s ?? 1800;
  return `${p.gate_min_samples ?? 20} observations from the wave; waits up to ${fmtNum(timeout / 60, 1)} min, then fails`;
}

function plan(p) {
  const rows = [
    ['Target', h('code', {}, p.selector)],
    ['Canary', p.canary.count ?? `${fmtNum(p.canary.fraction * 100, 1)}%`],
    ['Waves', p.waves.map((w) => `${fmtNum(w * 100, 1)}%`).join(', ')],
    ['Pace', `${fmtNum(p.pace_per_min, 1)}/min`], ['Jitter', `${p.jitter_s} s`], ['Probation', `${p.probation_s} s`],
    ['Shadow step', p.shadow_s ? `${p.shadow_s} s beside the active model` : 'none'],
    ['Gates', p.gates.length ? p.gates.map((g) => h('code', {}, g, ' ')) : 'none'],
    ['Gate evidence', evidenceRule(p)],
    ['Against the parent', p.vs_parent
      ? `no worse by ${fmtNum(p.parent_margin * 100, 2)} points at ${fmtNum(p.parent_confidence * 100, 2)}%`
      : 'not compared'],
    ['Auto-rollback', p.auto_rollback ? 'yes' : 'no'], ['Max failures', String(p.max_failures)],
  ];
  return h('dl', { class: 'facts' }, rows.map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
}

function buttons(r, refresh) {
  if (!can('operator')) return null;
  const verbs = Object.entries(VERBS).filter(([, when]) => when.includes(r.status));
  if (!verbs.length) return null;
  return h('div', { class: 'actions', role: 'group', 'aria-label': 'Rollout actions' }, verbs.map(([verb]) =>
    h('button', {
      type: 'button', class: verb === 'abort' || verb === 'rollback' ? 'danger' : '',
      onclick: async () => {
        if ((verb === 'abort' || verb === 'rollback') && !window.confirm(`${verb} ${r.id}?`)) return;
        try {
          await api(`/rollouts/${encodeURIComponent(r.id)}/${verb}`, { method: 'POST' });
          toast(`${verb}: done`);
        } catch (err) { toast(`${verb} refused (${err.status}): ${err.message}`, 'error'); }
        refresh();
      },
    }, verb === 'rollback' ? 'Roll back' : verb[0].toUpperCase() + verb.slice(1))));
}

export async function mount(root, ctx) {
  const id = ctx.params.id;
  let offset = 0;
  let last = null;
  const head = h('div', { class: 'rollout-head' });
  const wavesBox = h('div', { class: 'waves' });
  const devBox = h('div');
  const eventBox = h('div');
  const updated = h('span', { class: 'muted updated' });
  replace(root,
    h('div', { class: 'page-head' },
      h('h1', {}, h('a', { href: link('rollouts'), class: 'crumb' }, 'Rollouts'), ' / ', id), updated),
    head, panel('Waves', wavesBox), h('div', { class: 'cols2' }, panel('Devices', devBox), panel('Events', eventBox)));

  function pager(total) {
    const go = (d) => h('button', {
      type: 'button', class: 'small', disabled: offset + d < 0 || offset + d >= total,
      onclick: () => { offset += d; draw(); },
    }, d < 0 ? 'Previous' : 'Next');
    return h('div', { class: 'pager' }, go(-PAGE),
      h('span', { class: 'count' }, total ? `${offset + 1}–${Math.min(total, offset + PAGE)} of ${total}` : '0'), go(PAGE));
  }

  function draw() {
    const r = last;
    replace(head, h('div', { class: 'panel rollout-summary' },
      h('p', { class: 'big' }, status(r.status), ' ', h('code', {}, r.artifact), ' → ', h('code', {}, r.target),
        ` · ${r.succeeded} of ${r.devices} updated`, r.failed ? `, ${r.failed} failed` : ''),
      r.reason ? notice(r.reason, r.status === 'completed' ? 'info' : 'error') : null,
      h('p', { class: 'muted' }, `started ${fmtTime(r.created_at)} by ${r.created_by}`,
        r.finished_at ? `, finished ${fmtTime(r.finished_at)}` : ''),
      buttons(r, refresh), h('details', {}, h('summary', {}, 'Plan'), plan(r.plan))));
    const shadowing = r.phase === 'shadowing';
    replace(wavesBox, [
      r.shadow ? shadowRow(r.shadow, shadowing ? r.waiting : '', shadowing ? r.gates_deadline : null) : null,
      ...r.waves.map((w) => waveRow(w, shadowing ? null : r.gates_deadline, r.status)),
    ]);
    const devices = r.devices_detail;
    replace(devBox, pager(devices.length), table([
      { title: 'Device', cell: (d) => h('a', { href: link(`devices/${encodeURIComponent(d.device_id)}`) }, d.device_id) },
      { title: 'Wave', cell: (d) => (d.wave === 0 ? 'canary' : String(d.wave)) },
      { title: 'Outcome', cell: (d) => status(d.status) },
      { title: 'Phase', cell: (d) => d.phase || '—' },
      { title: 'Detail', cell: (d) => d.detail || '' },
      { title: 'Finished', cell: (d) => fmtTime(d.finished_at), class: 'nowrap' },
    ], devices.slice(offset, offset + PAGE), { empty: 'No device matched the target.' }));
    replace(eventBox, table([
      { title: 'Time', cell: (e) => fmtTime(e.ts), class: 'nowrap' },
      { title: 'Event', cell: (e) => e.kind },
      { title: 'Message', cell: (e) => [e.device_id ? h('code', {}, e.device_id, ' ') : null, e.message] },
    ], r.events, { empty: 'No event yet.' }));
  }

  async function refresh() {
    let r;
    try {
      r = await api(`/rollouts/${encodeURIComponent(id)}`, { query: { events: 100 } });
    } catch (err) {
      replace(head, notice(err.message, 'error'));
      return;
    }
    if (!ctx.alive()) return;
    last = r;
    draw();
    updated.textContent = `updated ${new Date().toLocaleTimeString('en-GB')}`;
  }
  await refresh();
  ctx.every(() => { if (last && ACTIVE.includes(last.status)) refresh(); }, 2000);
}
