// Devices: the selector language as the search box, server-side pagination, live refresh.

import { api, can } from '../api.js';
import { h, replace, table, field, status, presence, ago, notice } from '../dom.js';
import { link } from '../routes.js';

const SIZES = [25, 50, 100, 250];

function tags(d) {
  return h('span', { class: 'tags' }, Object.entries(d.tags).map(([k, v]) =>
    h('span', { class: 'tag' }, v ? `${k}=${v}` : k)));
}

const COLUMNS = [
  { title: 'Device', cell: (d) => h('a', { href: link(`devices/${encodeURIComponent(d.id)}`) }, d.id) },
  { title: 'Presence', cell: (d) => presence(d.online) },
  { title: 'State', cell: (d) => status(d.state) },
  { title: 'Model', cell: (d) => d.model || '—' },
  { title: 'Firmware', cell: (d) => d.firmware || '—' },
  { title: 'Agent', cell: (d) => d.agent_version || '—' },
  { title: 'Health', cell: (d) => (d.health ? status(d.health) : '—') },
  { title: 'Twin', cell: (d) => status(d.twin) },
  { title: 'Tags', cell: tags },
  { title: 'Last seen', cell: (d) => ago(d.last_seen), class: 'nowrap' },
];

function addDeviceForm(onAdded) {
  const id = h('input', { name: 'id', required: true, pattern: '[A-Za-z0-9_\\-]{1,64}', autocomplete: 'off' });
  const tagText = h('input', { name: 'tags', placeholder: 'site=berlin line=3', autocomplete: 'off' });
  const out = h('div', { class: 'result' });
  const form = h('form', { class: 'inline-form', 'aria-label': 'Add a device' },
    field('New device id', id), field('Tags', tagText, 'key=value, separated by spaces'),
    h('button', { type: 'submit' }, 'Add device'), out);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const tagMap = Object.fromEntries(tagText.value.split(/\s+/).filter(Boolean).map((t) => {
      const [k, ...rest] = t.split('=');
      return [k, rest.join('=')];
    }));
    try {
      const made = await api('/devices', { method: 'POST', body: { id: id.value.trim(), tags: tagMap } });
      replace(out, h('p', {}, 'Enroll it on the device with (the token is shown once):'),
        h('pre', { class: 'code', tabindex: '0' }, made.enroll_command));
      id.value = '';
      onAdded();
    } catch (err) {
      replace(out, notice(err.message, 'error'));
    }
  });
  return h('details', { class: 'adder' }, h('summary', {}, 'Add a device'), form);
}

export async function mount(root, ctx) {
  const selector = ctx.query.get('selector') || '';
  const offset = Math.max(0, Number(ctx.query.get('offset')) || 0);
  const limit = SIZES.includes(Number(ctx.query.get('limit'))) ? Number(ctx.query.get('limit')) : 50;
  const go = (q) => { location.hash = link('devices', { selector, limit, offset: 0, ...q }); };

  const input = h('input', {
    name: 'selector', type: 'search', value: selector, class: 'selector', spellcheck: false,
    placeholder: 'tag:site=berlin and model:digits<2.0 and online', autocomplete: 'off',
  });
  const size = h('select', { name: 'limit' }, SIZES.map((n) => h('option', { value: n, selected: n === limit }, String(n))));
  const search = h('form', { class: 'search', role: 'search' },
    field('Selector', input, 'keys: tag group id model firmware agent hardware health state; and/or/not, online/offline'),
    field('Per page', size),
    h('button', { type: 'submit', class: 'primary' }, 'Filter'));
  search.addEventListener('submit', (e) => { e.preventDefault(); go({ selector: input.value.trim(), limit: size.value }); });
  size.addEventListener('change', () => go({ selector: input.value.trim(), limit: size.value }));

  const results = h('div', { class: 'results' });
  const pager = h('nav', { class: 'pager', 'aria-label': 'Pages' });
  replace(root, h('div', { class: 'page-head' }, h('h1', {}, 'Devices')), search,
    can('operator') ? addDeviceForm(() => refresh()) : null, pager, results);

  async function refresh() {
    let page;
    try {
      page = await api('/devices', { query: { selector, offset, limit } });
    } catch (err) {
      replace(results, notice(err.message, 'error'));
      replace(pager);
      return;
    }
    if (!ctx.alive()) return;
    const end = Math.min(page.total, offset + page.items.length);
    const prev = offset > 0 ? link('devices', { selector, limit, offset: Math.max(0, offset - limit) }) : null;
    const next = end < page.total ? link('devices', { selector, limit, offset: offset + limit }) : null;
    const online = page.items.filter((d) => d.online).length;
    replace(pager,
      h('span', { class: 'count', id: 'device-count' },
        page.total ? `${offset + 1}–${end} of ${page.total.toLocaleString('en')}` : '0 devices'),
      h('span', { class: 'muted' }, ` · ${online} of ${page.items.length} on this page online`),
      h('span', { class: 'spacer' }),
      prev ? h('a', { href: prev, class: 'button', rel: 'prev' }, '← Previous') : null,
      next ? h('a', { href: next, class: 'button', rel: 'next' }, 'Next →') : null);
    const focused = document.activeElement && document.activeElement.closest('.results') ? document.activeElement.getAttribute('href') : null;
    replace(results, table(COLUMNS, page.items, { empty: 'No device matches this selector.' }));
    if (focused) results.querySelector(`a[href="${CSS.escape(focused)}"]`)?.focus();
  }
  await refresh();
  ctx.every(refresh, 5000);
  if (selector) input.focus();
}
