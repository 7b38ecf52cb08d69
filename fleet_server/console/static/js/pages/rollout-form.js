// The create form: the options of `fleetctl rollout create`, in the operator's own words
// (the server parses them, so a typo comes back as a 422 naming the option and column).

import { api } from '../api.js';
import { h, replace, field, notice } from '../dom.js';

const TEXT = [
  // [body key, label, default, hint]
  ['target', 'Target selector', 'all', 'e.g. tag:site=berlin and model:digits<1.3'],
  ['canary', 'Canary', '1', 'devices (3) or share (5%) in the first wave'],
  ['waves', 'Waves', '100%', 'cumulative shares after the canary, e.g. 25%,50%,100%'],
  ['pace', 'Pace', '60/min', 'desired states sent per minute'],
  ['jitter', 'Jitter', '0s', 'random delay per device'],
  ['probation', 'Probation', '10m', 'watch window before the gates decide'],
  ['max_failures', 'Max failures', '0', 'failed devices tolerated before halting'],
  ['device_timeout', 'Device timeout', '1h', 'a device that takes longer has failed'],
  ['offline_grace', 'Offline grace', '24h', 'how long to wait for an offline device'],
  ['gate_min_samples', 'Gate min samples', '20', 'observations (inferences, labels) a gate needs from the wave'],
  ['gate_timeout', 'Gate timeout', '30m', 'after probation, how long a gate short of data waits, then fails'],
  ['parent_margin', 'Parent margin', '5pt', 'champion/challenger: how much less accurate than the version it replaces'],
  ['parent_confidence', 'Parent confidence', '95%', 'champion/challenger: confidence of that comparison'],
  ['shadow', 'Shadow step', '0s', 'run the new version beside the active one this long before the canary switches (shadow_* gates)'],
];

async function artifactOptions(select) {
  const page = await api('/artifacts', { query: { limit: 500 } });
  replace(select, page.items.length
    ? page.items.map((a) => h('option', { value: a.spec }, `${a.kind} ${a.spec}`))
    : h('option', { value: '' }, 'no artifact registered (fleetctl models push)'));
}

export function createForm(onCreated) {
  const artifact = h('select', { name: 'artifact', required: true }, h('option', { value: '' }, 'loading…'));
  const inputs = Object.fromEntries(TEXT.map(([key, , value]) =>
    [key, h('input', { name: key, value, required: key !== 'jitter', spellcheck: false, autocomplete: 'off' })]));
  const gates = h('textarea', { name: 'gates', rows: 3, spellcheck: false },
    'error_rate<0.01\ninstall_success_rate>=0.99');
  const rollback = h('input', { type: 'checkbox', name: 'auto_rollback', checked: true });
  const noData = h('input', { type: 'checkbox', name: 'gates_allow_no_data' });
  const vsParent = h('input', { type: 'checkbox', name: 'vs_parent', checked: true });
  const out = h('div', { class: 'result', 'aria-live': 'polite' });
  const submit = h('button', { type: 'submit', class: 'primary' }, 'Start rollout');
  const form = h('form', { class: 'rollout-form', 'aria-label': 'Create a rollout' },
    h('div', { class: 'form-grid' },
      field('Artifact', artifact, 'from the registry'),
      TEXT.map(([key, label, , hint]) => field(label, inputs[key], hint)),
      field('Gates', gates, 'one per line: metric OP number'),
      h('div', { class: 'field check' }, h('label', {}, rollback, ' Roll back automatically when a gate fails')),
      h('div', { class: 'field check' }, h('label', {}, noData,
        ' Let a gate with no data pass (only for fleets without traffic)')),
      h('div', { class: 'field check' }, h('label', {}, vsParent,
        ' Compare each wave with the version it replaces (labelled accuracy)'))),
    h('div', {}, submit), out);
  artifactOptions(artifact).catch((err) => replace(out, notice(err.message, 'error')));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const body = Object.fromEntries(Object.entries(inputs).map(([k, el]) => [k, el.value.trim()]));
    body.max_failures = Number(body.max_failures);
    if (!Number.isInteger(body.max_failures) || body.max_failures < 0) {
      replace(out, notice('Max failures: a whole number of devices, 0 or more.', 'error'));
      inputs.max_failures.focus();
      return;
    }
    body.gate_min_samples = Number(body.gate_min_samples);
    if (!Number.isInteger(body.gate_min_samples) || body.gate_min_samples < 1) {
      replace(out, notice('Gate min samples: a whole number, 1 or more.', 'error'));
      inputs.gate_min_samples.focus();
      return;
    }
    if (!body.jitter) body.jitter = '0s';
    body.artifact = artifact.value;
    body.gates = gates.value.split('\n').map((g) => g.trim()).filter(Boolean);
    body.auto_rollback = rollback.checked;
    body.gates_allow_no_data = noData.checked;
    body.vs_parent = vsParent.checked;
    submit.disabled = true;
    try {
      const created = await api('/rollouts', { method: 'POST', body });
      replace(out);
      onCreated(created);
    } catch (err) {
      const what = err.status === 422 ? 'The plan was refused' : err.status === 409 ? 'Conflict' : 'Error';
      replace(out, notice(`${what} (${err.status}): ${err.message}`, 'error'));
    } finally {
      submit.disabled = false;
    }
  });
  return form;
}
