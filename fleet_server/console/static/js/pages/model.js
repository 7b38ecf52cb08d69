// One registered model package: its task, every input and output (role, shape, dtype,
// quantization, declared preprocessing), quantization facts, labels and size, from
// GET /artifacts/{id}/model (the summary `fleetctl models show` prints).

import { api } from '../api.js';
import { h, replace, table, panel, fmtNum, notice } from '../dom.js';
import { link } from '../routes.js';

function size(bytes) {
  if (bytes === null || bytes === undefined) return '—';
  return bytes >= 2 ** 20 ? `${fmtNum(bytes / 2 ** 20, 1)} MiB` : `${fmtNum(bytes / 1024, 1)} KiB`;
}

function shape(t) {
  return `${t.dtype}[${t.shape.map((d) => (d === -1 ? 'batch' : d)).join(', ')}]`;
}

function quant(t) {
  const q = t.quantization;
  return q ? `scale ${fmtNum(q.scale, 6)}, zero point ${q.zero_point}` : '—';
}

function prep(t) {
  const p = t.preprocessing;
  if (!p) return h('span', { class: 'muted' }, 'none');
  const parts = [];
  if (p.image) parts.push(`image ${p.image.height}×${p.image.width}×${p.image.channels}`);
  if (p.layout) parts.push(p.layout.toUpperCase());
  if (p.scale !== undefined && p.scale !== 1) parts.push(`× ${Array.isArray(p.scale) ? 'per feature' : fmtNum(p.scale, 5)}`);
  if (p.mean) parts.push(`mean ${p.mean.map((v) => fmtNum(v, 3)).join('/')}`);
  if (p.std) parts.push(`std ${p.std.map((v) => fmtNum(v, 3)).join('/')}`);
  if (p.features) parts.push(`features ${p.features.join(', ')}`);
  return parts.join(' · ') || h('span', { class: 'muted' }, 'none');
}

function taskLine(task) {
  const skip = new Set(['kind', 'version', 'stateful']);
  const details = Object.entries(task).filter(([k, v]) => !skip.has(k) && v !== null && !(k === 'multi_label' && !v))
    .map(([k, v]) => `${k}: ${typeof v === 'object' ? JSON.stringify(v) : v}`);
  return h('p', {}, h('b', { 'data-task': task.kind }, task.kind),
    task.stateful ? ' (stateful)' : '', ` · task version ${task.version}`,
    details.length ? h('span', { class: 'muted' }, ` · ${details.join(' · ')}`) : '');
}

export async function mount(root, ctx) {
  const id = ctx.params.id;
  let m;
  try {
    m = await api(`/artifacts/${encodeURIComponent(id)}/model`);
  } catch (err) {
    replace(root, h('h1', {}, 'Model'), notice(err.message, 'error'));
    return;
  }
  if (!ctx.alive()) return;
  const q = m.quantization;
  const agreement = q.agreement
    ? ` · float-vs-int8 top-1 ${q.agreement.outputs.map((o) => (o.top1 === null || o.top1 === undefined ? o.name : `${fmtNum(o.top1 * 100, 1)}%`)).join(', ')}`
    : '';
  replace(root,
    h('div', { class: 'page-head' }, h('h1', {}, `${m.name} ${m.version}`),
      h('a', { href: link('artifacts', { kind: 'model' }) }, 'all models')),
    panel('Task', taskLine(m.task)),
    panel('Inputs', table([
      { title: 'Name', cell: (t) => h('code', {}, t.name) },
      { title: 'Role', cell: (t) => (t.state_from ? `state ← ${t.state_from}` : t.role) },
      { title: 'Tensor', cell: shape },
      { title: 'Quantization', cell: quant },
      { title: 'Preprocessing', cell: prep },
    ], m.inputs)),
    panel('Outputs', table([
      { title: 'Name', cell: (t) => h('code', {}, t.name) },
      { title: 'Tensor', cell: shape },
      { title: 'Quantization', cell: quant },
    ], m.outputs)),
    panel('Package',
      h('p', {}, `${m.flavor} · format ${m.format} · ${q.dtype} (${q.method})`,
        q.int8_ops ? ` · int8 ${Object.entries(q.int8_ops).map(([k, v]) => `${k}×${v}`).join(' ')}` : '', agreement),
      h('p', {}, `${size(m.size)} (model file ${size(m.model_bytes)}) · ${m.self_test_vectors} self-test vectors · `
        + `drift reference over ${m.drift_features} features`),
      m.labels.length ? h('p', {}, `labels: ${m.labels.slice(0, 20).join(', ')}${m.labels.length > 20 ? ' …' : ''}`) : ''));
}
