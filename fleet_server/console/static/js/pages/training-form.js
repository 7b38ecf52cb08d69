// The start form: the options of `fleetctl train start`. The strategy names and every
// default come from the server's own run schema (its OpenAPI document), so the form offers
// exactly what the server accepts; the server validates the rest (a 422 names the field).

import { api } from '../api.js';
import { h, replace, field, notice } from '../dom.js';
import { submitTo } from './create.js';

const NUMBERS = [
  // [spec key (local.* = local training), label, hint, whole number?]
  ['rounds', 'Rounds', 'aggregations (fedbuff: new global versions)', true],
  ['min_clients', 'Min clients', 'quorum: good updates a round needs', true],
  ['fraction', 'Fraction', 'share of the eligible devices sampled per round', false],
  ['local.epochs', 'Local epochs', 'passes over each device\'s samples per round', true],
  ['local.lr', 'Local learning rate', 'the devices\' SGD step', false],
  ['server_lr', 'Server step', 'server optimisers; empty: the strategy\'s measured default', false],
  ['over_select', 'Over-selection', 'e.g. 0.3: sample 30% more, close when enough are in', false],
  ['round_deadline_s', 'Round deadline (s)', 'close with the quorum after this; empty: wait', false],
  ['buffer_size', 'Buffer size', 'fedbuff: updates per aggregation', true],
  ['max_staleness', 'Max staleness', 'fedbuff: oldest version an update may start from', true],
  ['evaluate_every', 'Evaluate every', 'federated evaluation every k rounds (and the last)', true],
  ['accept_margin', 'Acceptance margin', 'federated judging: how far the candidate may trail', false],
];

function schemaOf(doc) {
  const schemas = doc.components?.schemas || {};
  const spec = schemas.RunSpec;
  if (!spec) throw new Error('the server\'s API document has no RunSpec');
  return { spec: spec.properties, local: schemas.LocalTraining?.properties || {} };
}

function defaultOf(props, key) {
  const value = props[key]?.default;
  return value === null || value === undefined ? '' : String(value);
}

export function startForm(onStarted) {
  const model = h('input', { name: 'model', value: 'digits', required: true, spellcheck: false });
  const target = h('input', { name: 'target', value: 'all', required: true, spellcheck: false });
  const from = h('input', { name: 'parent_version', spellcheck: false, autocomplete: 'off' });
  const strategy = h('select', { name: 'strategy' }, h('option', { value: '' }, 'loading…'));
  const clientEvaluate = h('input', { type: 'checkbox', name: 'client_evaluate' });
  const evaluateBy = h('input', { name: 'evaluate_by', spellcheck: false, autocomplete: 'off' });
  const acceptBy = h('select', { name: 'accept_by' }, h('option', { value: '' }, 'loading…'));
  const inputs = Object.fromEntries(NUMBERS.map(([key]) =>
    [key, h('input', { name: key, inputmode: 'decimal', autocomplete: 'off' })]));
  const out = h('div', { class: 'result', 'aria-live': 'polite' });
  const submit = h('button', { type: 'submit', class: 'primary' }, 'Start training');
  const form = h('form', { class: 'training-form', 'aria-label': 'Start a training run' },
    h('div', { class: 'form-grid' },
      field('Model', model, 'a trainable model name'),
      field('Target', target, 'device selector, e.g. tag:site=berlin'),
      field('Start from version', from, 'empty: the newest trainable version'),
      field('Strategy', strategy, 'fedbuff is asynchronous (no rounds to wait for)'),
      NUMBERS.map(([key, label, hint]) => field(label, inputs[key], hint)),
      field('Federated evaluation', clientEvaluate, 'devices evaluate on samples they hold out'),
      field('Cohort tag', evaluateBy, 'group device figures by this tag, e.g. site'),
      field('Judge candidate by', acceptBy, 'auto: the devices when the server has no data')),
    h('div', {}, submit), out);

  api('/openapi.json').then((doc) => {
    const { spec, local } = schemaOf(doc);
    const names = spec.strategy?.enum || [];
    replace(strategy, names.map((n) => h('option', { value: n, selected: n === spec.strategy.default },
      n === spec.strategy.default ? `${n} (default)` : n)));
    const judges = spec.accept_by?.enum || [];
    replace(acceptBy, judges.map((n) => h('option', { value: n, selected: n === spec.accept_by.default }, n)));
    for (const [key] of NUMBERS) {
      const [props, name] = key.startsWith('local.') ? [local, key.slice(6)] : [spec, key];
      inputs[key].value = defaultOf(props, name);
    }
  }).catch((err) => replace(out, notice(err.message, 'error')));

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const body = { model: model.value.trim(), target: target.value.trim(), local: {} };
    if (strategy.value) body.strategy = strategy.value;
    if (from.value.trim()) body.parent_version = from.value.trim();
    if (clientEvaluate.checked) body.client_evaluate = true;
    if (evaluateBy.value.trim()) body.evaluate_by = evaluateBy.value.trim();
    if (acceptBy.value) body.accept_by = acceptBy.value;
    for (const [key, label, , whole] of NUMBERS) {
      const text = inputs[key].value.trim();
      if (!text) continue;
      const value = Number(text);
      if (!Number.isFinite(value) || (whole && !Number.isInteger(value))) {
        replace(out, notice(`${label}: ${whole ? 'a whole number' : 'a number'}, or empty.`, 'error'));
        inputs[key].focus();
        return;
      }
      if (key.startsWith('local.')) body.local[key.slice(6)] = value; else body[key] = value;
    }
    await submitTo('/training/runs', body, { button: submit, out, refused: 'The run was refused', done: onStarted });
  });
  return form;
}
