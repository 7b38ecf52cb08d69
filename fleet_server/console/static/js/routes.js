// The console's pages.  Adding one = a module in pages/ + an entry here.
// `role`: least role that sees it; `probe`: an API whose 404 means "not on this server"
// (a section whose API is missing shows "not available" where the overview links it).

export const ROUTES = [
  { path: 'overview', title: 'Overview', page: () => import('./pages/overview.js') },
  { path: 'devices', title: 'Devices', page: () => import('./pages/devices.js') },
  { path: 'devices/:id', page: () => import('./pages/device.js') },
  {
    path: 'rollouts', title: 'Rollouts', probe: '/rollouts',
    page: () => import('./pages/rollouts.js'),
  },
  { path: 'rollouts/:id', page: () => import('./pages/rollout.js') },
  {
    path: 'artifacts', title: 'Models & firmware', probe: '/artifacts',
    page: () => import('./pages/artifacts.js'),
  },
  { path: 'artifacts/:id', page: () => import('./pages/model.js') },
  { path: 'models/:name/:version', page: () => import('./pages/card.js') },
  {
    path: 'training', title: 'Training runs', probe: '/training/runs',
    page: () => import('./pages/training.js'),
  },
  { path: 'training/:id', page: () => import('./pages/training.js') },
  { path: 'audit', title: 'Audit log', role: 'admin', page: () => import('./pages/audit.js') },
  { path: 'users', title: 'Users & tokens', role: 'admin', page: () => import('./pages/users.js') },
];

export function match(hash) {
  const [pathPart, queryPart = ''] = hash.replace(/^#\/?/, '').split('?');
  const parts = pathPart.split('/').filter(Boolean).map(decodeURIComponent);
  for (const route of ROUTES) {
    const spec = route.path.split('/');
    if (spec.length !== parts.length) continue;
    const params = {};
    if (spec.every((s, i) => (s.startsWith(':') ? (params[s.slice(1)] = parts[i], true) : s === parts[i]))) {
      return { route, params, query: new URLSearchParams(queryPart) };
    }
  }
  return null;
}

export function link(path, query = {}) {
  const q = new URLSearchParams(Object.entries(query).filter(([, v]) => v !== '' && v !== undefined && v !== null));
  const s = q.toString();
  return `#/${path}${s ? `?${s}` : ''}`;
}
