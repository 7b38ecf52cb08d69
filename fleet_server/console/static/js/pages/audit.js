// The audit log (admins): who did what, from where, with which outcome; paged, filterable.

import { api } from '../api.js';
import { h, replace, table, field, status, fmtTime, notice } from '../dom.js';
import { link } from '../routes.js';

const LIMIT = 50;

export async function mount(root, ctx) {
  const actor = ctx.query.get('actor') || '';
  const offset = Math.max(0, Number(ctx.query.get('offset')) || 0);
  const input = h('input', { name: 'actor', value: actor, autocomplete: 'off' });
  const form = h('form', { class: 'search', role: 'search' }, field('Actor', input),
    h('button', { type: 'submit', class: 'primary' }, 'Filter'));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    location.hash = link('audit', { actor: input.value.trim() });
  });
  const pager = h('nav', { class: 'pager', 'aria-label': 'Pages' });
  const out = h('div', { class: 'results' });
  replace(root, h('div', { class: 'page-head' }, h('h1', {}, 'Audit log')), form, pager, out);

  async function refresh() {
    let page;
    try {
      page = await api('/audit', { query: { actor, offset, limit: LIMIT } });
    } catch (err) {
      replace(out, notice(err.message, 'error'));
      return;
    }
    if (!ctx.alive()) return;
    const end = offset + page.items.length;
    replace(pager, h('span', { class: 'count' }, page.total ? `${offset + 1}–${end} of ${page.total}` : 'no entries'),
      h('span', { class: 'spacer' }),
      offset > 0 ? h('a', { class: 'button', href: link('audit', { actor, offset: Math.max(0, offset - LIMIT) }) }, '← Newer') : null,
      end < page.total ? h('a', { class: 'button', href: link('audit', { actor, offset: end }) }, 'Older →') : null);
    replace(out, table([
      { title: 'When', cell: (e) => fmtTime(e.ts), class: 'nowrap' },
      { title: 'Actor', cell: (e) => e.actor },
      { title: 'Role', cell: (e) => e.role || '—' },
      { title: 'Action', cell: (e) => h('code', {}, e.action) },
      { title: 'Target', cell: (e) => e.target },
      { title: 'Outcome', cell: (e) => status(e.outcome) },
      { title: 'HTTP', cell: (e) => String(e.detail.status ?? '') },
      { title: 'Source', cell: (e) => e.source_ip },
    ], page.items, { empty: 'No entries.' }));
  }
  await refresh();
  ctx.every(refresh, 5000);
}
