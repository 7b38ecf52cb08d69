// What the two create forms (a new rollout, a new training run) share: the panel that
// holds one on its list page, the POST that sends it, and the page it opens on success,
// so that both behave and word their refusals alike.

import { api, can } from '../api.js';
import { h, replace, notice } from '../dom.js';
import { link } from '../routes.js';

// The collapsed panel holding `form` on a list page; only operators may create.
export function createPanel(id, title, form) {
  return can('operator') ? h('details', { class: 'panel', id }, h('summary', {}, title), form()) : null;
}

// A handler that opens the page of what was just created (`rollouts/ID`, `training/ID`).
export function openCreated(page) {
  return (created) => { location.hash = link(`${page}/${encodeURIComponent(created.id)}`); };
}

// POST `body` to `path` with the button held down; `refused` names what a 422 refused.
export async function submitTo(path, body, { button, out, refused, done }) {
  button.disabled = true;
  try {
    const answer = await api(path, { method: 'POST', body });
    replace(out);
    done(answer);
  } catch (err) {
    const what = err.status === 422 ? refused : err.status === 409 ? 'Conflict' : 'Error';
    replace(out, notice(`${what} (${err.status}): ${err.message}`, 'error'));
  } finally {
    button.disabled = false;
  }
}
