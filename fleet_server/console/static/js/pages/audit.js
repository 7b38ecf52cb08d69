// The audit log (admins): who did what, from where, with which outcome; paged, filterable.

import { api } from '../api.js';
import { h, replace, table, field, status, fmtTime, notice } from '../dom.js';
import { link } from '../routes.js';

const LIMIT = 50;

const WINDOWS = [['', 'any time'], ['3600', 'last hour'], ['86400', 'last 24 h'], ['604800', 'last 7 days']];
const OUTCOMES = ['', 'ok', 'denied', 'failed', 'error'];

export async function mount(root, ctx) {
  const q = (k) => ctx.query.get(k) || '';
  const filters = { actor: q('actor'), action: q('action'), object: q('object'), outcome: q('outcome'), within: q('within') };
  const offset = Math.max(0, Number(ctx.query.get('offset')) || 0);
  const text = (name) => h('input', { name, value: filters[name], autocomplete: 'off' });
  const choice = (name, options) => {
    const select = h('select', { name }, options.map(([value, label]) => h('option', { value }, label)));
    select.value = filters[name];
    return select;
  };
  const inputs = {
    actor: text('actor'), action: text('action'), object: text('object'),
    outcome: choice('outcome', OUTCOMES.map((o) => [o, o || 'any'])), within: choice('within', WINDOWS),
  };
  const form = h('form', { class: 'search', role: 'search' },
    field('Actor', inputs.actor), field('Action', inputs.action, 'e.g. create_rollout'),
    field('Object', inputs.object, 'e.g. rollout:ro-7, device:cam-1'),
    field('Outcome', inputs.outcome), field('When', inputs.within),
    h('button', { type: 'submit', class: 'primary' }, 'Filter'));
  const here = (extra = {}) => link('audit', { ...Object.fromEntries(Object.entries(filters).filter(([, v]) => v)), ...extra });
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    Object.keys(filters).forEach((k) => { filters[k] = inputs[k].value.trim(); });
    location.hash = here();
  });
  const pager = h('nav', { class: 'pager', 'aria-label': 'Pages' });
  const out = h('div', { class: 'results' });
  replace(root, h('div', { class: 'page-head' }, h('h1', {}, 'Audit log')), form, pager, out);

  async function refresh() {
    let page;
    try {
      const since = filters.within ? Date.now() / 1000 - Number(filters.within) : undefined;
      page = await api('/audit', {
        query: {
          actor: filters.actor || undefined, action: filters.action || undefined,
          object: filters.object || undefined, outcome: filters.outcome || undefined,
          since, offset, limit: LIMIT,
        },
      });
    } catch (err) {
      replace(out, notice(err.message, 'error'));
      return;
    }
    if (!ctx.alive()) return;
    const end = offset + page.items.length;
    replace(pager, h('span', { class: 'count' }, page.total ? `${offset + 1}–${end} of ${page.total}` : 'no entries'),
      h('span', { class: 'spacer' }),
      offset > 0 ? h('a', { class: 'button', href: here({ offset: Math.max(0, offset - LIMIT) }) }, '← Newer') : null,
      end < page.total ? h('a', { class: 'button', href: here({ offset: end }) }, 'Older →') : null);
    replace(out, table([
      { title: 'When', cell: (e) => fmtTime(e.ts), class: 'nowrap' },
      { title: 'Actor', cell: (e) => e.actor },
      { title: 'Role', cell: (e) => e.role || '—' },
      { title: 'Action', cell: (e) => h('code', {}, e.action) },
      { title: 'Object', cell: (e) => h('code', {}, e.target) },
      { title: 'Outcome', cell: (e) => status(e.outcome) },
      { title: 'Reason', cell: (e) => e.detail.reason || '' },
      { title: 'HTTP', cell: (e) => String(e.detail.status ?? '') },
      { title: 'Source', cell: (e) => e.source_ip },
    ], page.items, { empty: 'No entries.' }));
  }
  await refresh();
  ctx.every(refresh, 5000);
}
