// Rollouts: the list (state, artifact, progress) refreshed live, and for operators the
// create form; a created rollout opens its own page.

import { api } from '../api.js';
import { h, replace, table, status, fmtTime, notice } from '../dom.js';
import { link } from '../routes.js';
import { createForm } from './rollout-form.js';
import { createPanel, openCreated } from './create.js';

export const ACTIVE = ['pending', 'canary', 'wave', 'paused', 'halted', 'rolling_back'];

export function meter(done, total, failed, label) {
  const fill = h('span', { class: `fill on${failed ? ' bad' : ''}` });
  fill.style.setProperty('width', `${total ? (100 * done) / total : 0}%`);
  return h('div', {
    class: 'bar', role: 'progressbar', 'aria-label': label,
    'aria-valuemin': '0', 'aria-valuemax': String(total), 'aria-valuenow': String(done),
  }, fill);
}

export function progress(r) {
  return h('div', { class: 'progress', title: `${r.succeeded} of ${r.devices} updated, ${r.failed} failed` },
    meter(r.succeeded, r.devices, r.failed, `progress of ${r.id}`),
    h('span', { class: 'bar-value', title: `${r.succeeded} of ${r.devices} devices updated` },
      `${r.succeeded}/${r.devices} updated`, r.failed ? ` · ${r.failed} failed` : ''));
}

export function rolloutLink(r) {
  return h('a', { href: link(`rollouts/${encodeURIComponent(r.id)}`) }, r.id);
}

export async function mount(root, ctx) {
  const only = ctx.query.get('status') || '';
  const select = h('select', { name: 'status', 'aria-label': 'Show' },
    [['', 'all'], ...ACTIVE.map((s) => [s, s.replace('_', ' ')]), ['completed', 'completed'],
      ['aborted', 'aborted'], ['rolled_back', 'rolled back']].map(([v, label]) =>
      h('option', { value: v, selected: v === only }, label)));
  select.addEventListener('change', () => { location.hash = link('rollouts', { status: select.value }); });
  const out = h('div', { class: 'results', id: 'rollout-list' });
  const updated = h('span', { class: 'muted updated' });
  replace(root,
    h('div', { class: 'page-head' }, h('h1', {}, 'Rollouts'), h('label', {}, 'Show ', select), updated),
    createPanel('create-rollout', 'New rollout', () => createForm(openCreated('rollouts'))),
    out);

  async function refresh() {
    let rows;
    try {
      ({ items: rows } = await api('/rollouts', { query: { status: only, limit: 200 } }));
    } catch (err) {
      replace(out, notice(err.message, 'error'));
      return;
    }
    if (!ctx.alive()) return;
    replace(out, table([
      { title: 'Rollout', cell: rolloutLink },
      { title: 'Status', cell: (r) => [status(r.status), r.waiting ? h('span', { class: 'muted', title: r.waiting }, ' waiting for data') : null] },
      { title: 'Artifact', cell: (r) => h('code', {}, r.artifact) },
      { title: 'Target', cell: (r) => h('code', {}, r.target) },
      { title: 'Wave', cell: (r) => (r.wave === 0 ? 'canary' : `wave ${r.wave}`) },
      { title: 'Progress', cell: progress, class: 'wide' },
      { title: 'Started', cell: (r) => `${fmtTime(r.created_at)} by ${r.created_by}`, class: 'nowrap' },
    ], rows, { empty: 'No rollout yet.' }));
    updated.textContent = `updated ${new Date().toLocaleTimeString('en-GB')}`;
  }
  await refresh();
  ctx.every(refresh, 2000);
}
