// The REST API as the console uses it: same-origin fetch with the session cookie,
// the CSRF header on every mutation, and errors carrying the server's own words.

export const session = { username: null, role: null, csrf: null };

const RANK = { viewer: 0, operator: 1, admin: 2 };

export function can(role) {
  return session.role !== null && RANK[session.role] >= RANK[role];
}

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

const listeners = new Set();
export function onUnauthorized(fn) { listeners.add(fn); }

export async function api(path, { method = 'GET', body, query } = {}) {
  const url = new URL(`/api/v1${path}`, location.origin);
  for (const [k, v] of Object.entries(query || {})) {
    if (v !== undefined && v !== null && v !== '') url.searchParams.set(k, v);
  }
  const headers = { Accept: 'application/json' };
  if (method !== 'GET' && method !== 'HEAD' && session.csrf) headers['X-CSRF-Token'] = session.csrf;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let response;
  try {
    response = await fetch(url, {
      method, headers, credentials: 'same-origin',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    throw new ApiError(0, `the server did not answer (${err.message})`);
  }
  if (response.status === 204) return null;
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    const detail = (data && (data.detail || data.title)) || response.statusText;
    if (response.status === 401 && path !== '/auth/login') listeners.forEach((fn) => fn());
    throw new ApiError(response.status, typeof detail === 'string' ? detail : JSON.stringify(detail));
  }
  return data;
}

export async function loadSession() {
  try {
    const me = await api('/console/session');
    Object.assign(session, { username: me.username, role: me.role, csrf: me.csrf_token });
    return true;
  } catch (err) {
    if (err.status === 401) return false;
    throw err;
  }
}

export async function login(username, password) {
  const out = await api('/auth/login', {
    method: 'POST', body: { username, password, session: true },
  });
  Object.assign(session, { username: out.username, role: out.role, csrf: out.csrf_token });
}

export async function logout() {
  try {
    await api('/auth/logout', { method: 'POST' });
  } finally {
    Object.assign(session, { username: null, role: null, csrf: null });
  }
}
