// The shell: session, navigation, the hash router and live refresh.  Each page module
// exports `mount(root, ctx)`; `ctx.every(fn, ms)` polls while the page is shown.

import { session, can, loadSession, logout, onUnauthorized } from './api.js';
import { h, replace, notice } from './dom.js';
import { ROUTES, match } from './routes.js';
import { mountLogin } from './pages/login.js';

const main = document.getElementById('main');
const nav = document.getElementById('nav');
const who = document.getElementById('who');
let timers = [];
let generation = 0;

function stopTimers() {
  timers.forEach((t) => clearInterval(t));
  timers = [];
}

function renderChrome() {
  const current = location.hash.replace(/^#\/?/, '').split(/[/?]/)[0] || 'overview';
  replace(nav, h('ul', {}, ROUTES.filter((r) => r.title && (!r.role || can(r.role))).map((r) =>
    h('li', {}, h('a', {
      href: `#/${r.path}`, 'aria-current': r.path === current ? 'page' : null,
    }, r.title)))));
  replace(who, session.username
    ? [h('span', { class: 'user' }, session.username, ' ', h('span', { class: 'role' }, session.role)),
      h('button', { type: 'button', class: 'ghost', id: 'logout', onclick: doLogout }, 'Log out')]
    : []);
  document.body.classList.toggle('anon', !session.username);
}

async function doLogout() {
  stopTimers();
  try { await logout(); } catch { /* the cookie may already be gone */ }
  showLogin();
}

function showLogin() {
  stopTimers();
  generation += 1;
  Object.assign(session, { username: null, role: null, csrf: null });
  renderChrome();
  mountLogin(main, async () => {
    // The form goes at once: the page it leads to may take a while to load, and a
    // login form still showing over a live session would invite a second login.
    replace(main, h('p', { role: 'status' }, 'Loading…'));
    renderChrome();
    if (!location.hash || location.hash === '#/login') location.hash = '#/overview';
    else await route();
  });
}

async function route() {
  if (!session.username) return showLogin();
  stopTimers();
  document.getElementById('toast').className = 'toast';  // a message belongs to its page
  const mine = (generation += 1);
  const found = match(location.hash || '#/overview');
  renderChrome();
  if (!found) {
    replace(main, h('h1', {}, 'Not found'), notice('There is no such page.', 'error'));
    return;
  }
  const { route: r, params, query } = found;
  if (r.role && !can(r.role)) {
    replace(main, h('h1', {}, r.title), notice(`This page needs the ${r.role} role.`, 'error'));
    return;
  }
  const ctx = {
    params, query, route: r,
    alive: () => mine === generation,
    every(fn, ms) {
      const tick = () => { if (!document.hidden && mine === generation) fn(); };
      timers.push(setInterval(tick, ms));
    },
  };
  document.title = `${r.title || params.id || 'edgefleet'} · edgefleet`;
  const module = await r.page();
  if (mine !== generation) return;
  clear(main);
  try {
    await module.mount(main, ctx);
  } catch (err) {
    if (mine === generation) main.append(notice(err.message, 'error'));
  }
  if (mine === generation && !main.contains(document.activeElement)) main.focus({ preventScroll: true });
}

function clear(el) { while (el.firstChild) el.firstChild.remove(); }

document.querySelector('.skip').addEventListener('click', (event) => {
  event.preventDefault();  // the hash belongs to the router
  main.focus();
});
// Narrow screens: the sections fold into a menu under the header; choosing one closes it.
const toggle = document.getElementById('nav-toggle');
function openNav(open) {
  document.body.classList.toggle('nav-open', open);
  toggle.setAttribute('aria-expanded', String(open));
}
toggle.addEventListener('click', () => openNav(!document.body.classList.contains('nav-open')));
nav.addEventListener('click', (event) => { if (event.target.closest('a')) openNav(false); });
onUnauthorized(() => { if (session.username) showLogin(); });
window.addEventListener('hashchange', route);

(async () => {
  try {
    if (await loadSession()) await route();
    else showLogin();
  } catch (err) {
    replace(main, notice(`The server did not answer: ${err.message}`, 'error'));
  }
})();
