// The create form: the options of `fleetctl rollout create`, in the operator's own words
// (the server parses them, so a typo comes back as a 422 naming the option and column).
// Every default and hint comes from the server's plan schema (PlanSpec, in its OpenAPI
// document), the one vocabulary the CLI, the API and a training run's --rollout share.

import { api } from '../api.js';
import { h, replace, field, notice } from '../dom.js';
import { submitTo } from './create.js';

const TEXT = [
  // [body key, label]
  ['target', 'Target selector'],
  ['canary', 'Canary'],
  ['waves', 'Waves'],
  ['pace', 'Pace'],
  ['jitter', 'Jitter'],
  ['probation', 'Probation'],
  ['max_failures', 'Max failures'],
  ['device_timeout', 'Device timeout'],
  ['offline_grace', 'Offline grace'],
  ['gate_min_samples', 'Gate min samples'],
  ['gate_timeout', 'Gate timeout'],
  ['parent_margin', 'Parent margin'],
  ['parent_confidence', 'Parent confidence'],
  ['shadow', 'Shadow step'],
];
const WHOLE = { max_failures: 'Max failures: a whole number of devices, 0 or more.',
  gate_min_samples: 'Gate min samples: a whole number, 1 or more.' };
const CHECKS = [
  // [body key, label]
  ['auto_rollback', 'Roll back automatically when a gate fails'],
  ['gates_allow_no_data', 'Let a gate with no data pass (only for fleets without traffic)'],
  ['vs_parent', 'Compare each wave with the version it replaces (labelled accuracy)'],
];

function planSchema(doc) {
  const spec = doc.components?.schemas?.RolloutCreate;
  if (!spec) throw new Error('the server\'s API document has no RolloutCreate');
  return spec.properties;
}

async function artifactOptions(select) {
  const page = await api('/artifacts', { query: { limit: 500 } });
  replace(select, page.items.length
    ? page.items.map((a) => h('option', { value: a.spec }, `${a.kind} ${a.spec}`))
    : h('option', { value: '' }, 'no artifact registered (fleetctl models push)'));
}

export function createForm(onCreated) {
  const artifact = h('select', { name: 'artifact', required: true }, h('option', { value: '' }, 'loading…'));
  const inputs = Object.fromEntries(TEXT.map(([key]) =>
    [key, h('input', { name: key, value: key === 'target' ? 'all' : '', required: key === 'target',
      spellcheck: false, autocomplete: 'off' })]));
  const hints = Object.fromEntries(TEXT.map(([key]) => [key, h('span', {})]));
  const gates = h('textarea', { name: 'gates', rows: 3, spellcheck: false },
    'error_rate<0.01\ninstall_success_rate>=0.99');
  const checks = Object.fromEntries(CHECKS.map(([key]) => [key, h('input', { type: 'checkbox', name: key })]));
  const out = h('div', { class: 'result', 'aria-live': 'polite' });
  const submit = h('button', { type: 'submit', class: 'primary' }, 'Start rollout');
  const form = h('form', { class: 'rollout-form', 'aria-label': 'Create a rollout' },
    h('div', { class: 'form-grid' },
      field('Artifact', artifact, 'from the registry'),
      TEXT.map(([key, label]) => field(label, inputs[key], hints[key])),
      field('Gates', gates, 'one per line: metric OP number'),
      CHECKS.map(([key, label]) => h('div', { class: 'field check' }, h('label', {}, checks[key], ` ${label}`)))),
    h('div', {}, submit), out);
  artifactOptions(artifact).catch((err) => replace(out, notice(err.message, 'error')));
  let loaded = false; // before the schema: the checkboxes are not sent (the server's defaults)
  api('/openapi.json').then((doc) => {
    const props = planSchema(doc);
    for (const [key] of TEXT) {
      const value = props[key]?.default;
      if (!inputs[key].value && value !== undefined && value !== null) inputs[key].value = String(value);
      replace(hints[key], props[key]?.description || '');
    }
    for (const [key] of CHECKS) checks[key].checked = Boolean(props[key]?.default);
    loaded = true;
  }).catch((err) => replace(out, notice(err.message, 'error')));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const body = {};
    for (const [key, el] of Object.entries(inputs)) {
      const text = el.value.trim();
      if (!text) continue; // empty: the server's default
      if (key in WHOLE) {
        const value = Number(text);
        if (!Number.isInteger(value) || value < (key === 'max_failures' ? 0 : 1)) {
          replace(out, notice(WHOLE[key], 'error'));
          el.focus();
          return;
        }
        body[key] = value;
      } else body[key] = text;
    }
    body.artifact = artifact.value;
    body.gates = gates.value.split('\n').map((g) => g.trim()).filter(Boolean);
    if (loaded) for (const [key, el] of Object.entries(checks)) body[key] = el.checked;
    await submitTo('/rollouts', body, { button: submit, out, refused: 'The plan was refused', done: onCreated });
  });
  return form;
}
