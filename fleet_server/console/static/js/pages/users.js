// Users and API tokens (admins): create users, change roles, disable, revoke tokens.

import { api, session } from '../api.js';
import { h, replace, panel, table, field, status, fmtTime, ago, notice, toast } from '../dom.js';

const ROLES = ['viewer', 'operator', 'admin'];

function roleSelect(user, refresh) {
  const select = h('select', { 'aria-label': `Role of ${user.username}`, name: `role-${user.username}` },
    ROLES.map((r) => h('option', { value: r, selected: r === user.role }, r)));
  select.addEventListener('change', async () => {
    try {
      await api(`/users/${encodeURIComponent(user.username)}`, { method: 'PATCH', body: { role: select.value } });
      toast(`${user.username} is now ${select.value}`);
    } catch (err) {
      toast(err.message, 'error');
      select.value = user.role;
    }
    refresh();
  });
  return select;
}

function toggle(user, refresh) {
  return h('button', {
    type: 'button', class: 'small',
    onclick: async () => {
      try {
        await api(`/users/${encodeURIComponent(user.username)}`, { method: 'PATCH', body: { disabled: !user.disabled } });
      } catch (err) { toast(err.message, 'error'); }
      refresh();
    },
  }, user.disabled ? 'Enable' : 'Disable');
}

function createForm(refresh) {
  const name = h('input', { name: 'new-username', required: true, pattern: '[A-Za-z0-9_.@\\-]{1,64}', autocomplete: 'off' });
  const role = h('select', { name: 'new-role' }, ROLES.map((r) => h('option', { value: r }, r)));
  const pass = h('input', { name: 'new-password', type: 'password', required: true, minlength: 8, autocomplete: 'new-password' });
  const out = h('div');
  const form = h('form', { class: 'inline-form', 'aria-label': 'Create a user' },
    field('Username', name), field('Role', role), field('Password', pass, 'at least 8 characters'),
    h('button', { type: 'submit', class: 'primary' }, 'Create user'), out);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    try {
      await api('/users', { method: 'POST', body: { username: name.value.trim(), role: role.value, password: pass.value } });
      toast(`user ${name.value.trim()} created`);
      name.value = '';
      pass.value = '';
      replace(out);
      refresh();
    } catch (err) { replace(out, notice(err.message, 'error')); }
  });
  return form;
}

export async function mount(root, ctx) {
  const usersBox = h('div');
  const tokensBox = h('div');
  replace(root, h('div', { class: 'page-head' }, h('h1', {}, 'Users and tokens')),
    h('div', { class: 'cols2' },
      panel('Users', usersBox, h('h3', {}, 'New user'), createForm(() => refresh())),
      panel('API tokens and console sessions', tokensBox)));

  async function refresh() {
    const [{ items: users }, { items: tokens }] = await Promise.all([api('/users'), api('/tokens')]);
    if (!ctx.alive()) return;
    replace(usersBox, table([
      { title: 'User', cell: (u) => u.username },
      { title: 'Role', cell: (u) => roleSelect(u, refresh) },
      { title: 'Created', cell: (u) => fmtTime(u.created_at), class: 'nowrap' },
      { title: 'Status', cell: (u) => status(u.disabled ? 'disabled' : 'enabled') },
      { title: '', cell: (u) => (u.username === session.username ? '' : toggle(u, refresh)) },
    ], users));
    const live = tokens.filter((t) => !t.revoked_at && t.expires_at > Date.now() / 1000);
    replace(tokensBox, table([
      { title: 'Id', cell: (t) => h('code', {}, t.id) },
      { title: 'User', cell: (t) => t.username },
      { title: 'Name', cell: (t) => t.name },
      { title: 'Expires', cell: (t) => fmtTime(t.expires_at), class: 'nowrap' },
      { title: 'Last used', cell: (t) => ago(t.last_used) },
      {
        title: '', cell: (t) => h('button', {
          type: 'button', class: 'small danger', 'aria-label': `Revoke token ${t.id} of ${t.username}`,
          onclick: async () => {
            try {
              await api(`/tokens/${encodeURIComponent(t.id)}`, { method: 'DELETE' });
              toast(`token ${t.id} revoked`);
            } catch (err) { toast(err.message, 'error'); }
            refresh();
          },
        }, 'Revoke'),
      },
    ], live, { empty: 'No live tokens.' }),
    h('p', { class: 'muted' }, `${tokens.length - live.length} revoked or expired not shown`));
  }
  await refresh();
  ctx.every(() => refresh().catch(() => {}), 10000);
}
