// Login: a plain form (Enter submits; every control labelled) that gets a session cookie.

import { login } from '../api.js';
import { h, field, replace, notice } from '../dom.js';

export function mountLogin(root, done) {
  document.title = 'Log in · edgefleet';
  const user = h('input', { name: 'username', autocomplete: 'username', required: true, id: 'login-user' });
  const pass = h('input', {
    name: 'password', type: 'password', autocomplete: 'current-password', required: true, id: 'login-pass',
  });
  const status = h('div', { class: 'login-status' });
  const button = h('button', { type: 'submit', class: 'primary' }, 'Log in');
  const form = h('form', { class: 'login', 'aria-labelledby': 'login-title' },
    h('h1', { id: 'login-title' }, 'Log in to the fleet console'),
    field('Username', user), field('Password', pass), status, button);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    button.disabled = true;
    replace(status);
    try {
      await login(user.value.trim(), pass.value);
      pass.value = '';
      await done();
    } catch (err) {
      replace(status, notice(err.message, 'error'));
      pass.select();
    } finally {
      button.disabled = false;
    }
  });
  replace(root, h('div', { class: 'login-wrap' }, form));
  user.focus();
}
