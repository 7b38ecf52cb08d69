// A section whose API another part of the server provides.  Until it answers, the
// page says so plainly; once it does, its own page module replaces this one in routes.js.

import { api, ApiError } from '../api.js';
import { h, replace, notice } from '../dom.js';

export async function mount(root, ctx) {
  const r = ctx.route;
  const body = h('div');
  replace(root, h('div', { class: 'page-head' }, h('h1', {}, r.title)), body);
  try {
    await api(r.probe);
    replace(body, notice(`This server offers ${r.title.toLowerCase()} (/api/v1${r.probe}); ` +
      'this console version has no page for it yet.', 'info'));
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) {
      replace(body, h('div', { class: 'unavailable-box' },
        h('p', { class: 'unavailable' }, 'Not available on this server.'),
        h('p', { class: 'muted' }, `The ${r.title.toLowerCase()} API (/api/v1${r.probe}) is not installed here.`)));
    } else {
      replace(body, notice(err.message, 'error'));
    }
  }
}
