// Models and firmware in the registry: versions, lineage (upload or training run),
// TUF target and signature status, and where each version runs (from the fleet summary).

import { api } from '../api.js';
import { h, replace, table, field, fmtTime, fmtNum, notice } from '../dom.js';
import { link } from '../routes.js';

function lineage(a) {
  const l = a.lineage || {};
  if (l.run_id) {
    return h('span', {}, 'training ', h('a', { href: link(`training/${encodeURIComponent(l.run_id)}`) }, l.run_id),
      l.parent ? ` from ${l.parent}` : '');
  }
  return l.source ? String(l.source) : 'upload';
}

function size(bytes) {
  return bytes >= 2 ** 20 ? `${fmtNum(bytes / 2 ** 20, 1)} MiB` : `${fmtNum(bytes / 1024, 1)} KiB`;
}

// Whether the signed targets metadata lists this target with this hash (devices verify it).
function tuf(a) {
  if (a.tuf_signed === null || a.tuf_signed === undefined) return h('span', { class: 'muted' }, 'no TUF repository');
  return a.tuf_signed
    ? h('span', { class: 'badge good', title: 'listed in the signed targets metadata' }, 'in targets')
    : h('span', { class: 'badge bad', title: 'not in the signed targets metadata: devices will refuse it' }, 'not signed');
}

export async function mount(root, ctx) {
  const kind = ctx.query.get('kind') || '';
  const select = h('select', { name: 'kind' },
    [['', 'all'], ['model', 'models'], ['firmware', 'firmware']].map(([v, label]) =>
      h('option', { value: v, selected: v === kind }, label)));
  select.addEventListener('change', () => { location.hash = link('artifacts', { kind: select.value }); });
  const out = h('div', { class: 'results' });
  const count = h('span', { class: 'muted' });
  replace(root, h('div', { class: 'page-head' }, h('h1', {}, 'Models and firmware'), count),
    h('form', { class: 'search', role: 'search' }, field('Kind', select)), out);

  async function refresh() {
    let page;
    let summary;
    try {
      [page, summary] = await Promise.all([
        api('/artifacts', { query: { kind, limit: 200 } }), api('/console/summary'),
      ]);
    } catch (err) {
      replace(out, notice(err.message, 'error'));
      return;
    }
    if (!ctx.alive()) return;
    // A model version comes in several flavours (packages): count the devices per exact
    // package, so only the flavour that runs says so.  Devices whose package is none of
    // the registered ones are counted on the version, saying the package is not known.
    const runs = new Map([
      ...(summary.by_model_sha256 || []).map((b) => [`sha:${b.key}`, b]),
      ...summary.by_model.map((b) => [`model:${b.key}`, b]),
      ...summary.by_firmware.map((b) => [`firmware:${b.key}`, b]),
    ]);
    const known = new Map();  // name@version -> does any of its packages match a device?
    page.items.filter((a) => a.kind === 'model').forEach((a) => {
      const key = `${a.name}@${a.version}`;
      known.set(key, known.get(key) || runs.has(`sha:${a.sha256}`));
    });
    const plural = (n) => `${n} device${n === 1 ? '' : 's'}`;
    const where = (a) => {
      const version = `${a.name}@${a.version}`;
      const selector = a.kind === 'model' ? `model:${version}` : `firmware:${a.version}`;
      let b = runs.get(a.kind === 'model' ? `sha:${a.sha256}` : selector);
      let note = '';
      if (!b && a.kind === 'model' && !known.get(version)) {
        b = runs.get(selector);
        note = ' on this version (package not reported)';
      }
      if (!b) return h('span', { class: 'muted' }, 'no device');
      return h('a', { href: link('devices', { selector }) }, `${plural(b.total)} (${b.online} online)${note}`);
    };
    count.textContent = `${page.total} artifacts`;
    replace(out, table([
      { title: 'Kind', cell: (a) => a.kind },
      {
        title: 'Name',
        cell: (a) => (a.kind === 'model'
          ? h('a', { href: link(`artifacts/${a.id}`) }, h('b', {}, a.name))
          : h('b', {}, a.name)),
      },
      { title: 'Version', cell: (a) => (a.kind === 'model'
        ? h('a', { href: link(`models/${encodeURIComponent(a.name)}/${encodeURIComponent(a.version)}`), title: 'model card' }, a.version)
        : a.version) },
      { title: 'Flavor / hardware', cell: (a) => a.flavor || a.runtime || (a.hardware || []).join(' ') || '—' },
      { title: 'Size', cell: (a) => size(a.size), class: 'nowrap' },
      { title: 'Lineage', cell: lineage },
      { title: 'Runs on', cell: where },
      { title: 'TUF target', cell: (a) => h('code', { title: `sha256 ${a.sha256}` }, a.target_path) },
      { title: 'Signed', cell: tuf },
      { title: 'Pushed', cell: (a) => `${fmtTime(a.created_at)} by ${a.uploaded_by}`, class: 'nowrap' },
    ], page.items, { empty: 'No artifact registered yet (fleetctl models push).' }));
  }
  await refresh();
  ctx.every(refresh, 10000);
}
