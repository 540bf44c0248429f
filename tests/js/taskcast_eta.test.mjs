// etaText, the dashboard's "~2 min left": node --test tests/js/taskcast_eta.test.mjs
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { etaText } from '../../bridge/static/taskcast.js';

test('seconds left read as the nearest whole unit', () => {
  assert.equal(etaText(40.2), '~40 s left');
  assert.equal(etaText(44.6), '~45 s left');
  assert.equal(etaText(130), '~2 min left');
  assert.equal(etaText(150), '~3 min left');
  assert.equal(etaText(5400), '~2 h left');
  assert.equal(etaText(3 * 86400), '~3 d left');
});

test('a minute is not "60 s", and the end is never "0 s"', () => {
  assert.equal(etaText(59.5), '~1 min left');
  assert.equal(etaText(0), '~1 s left');
});

test('no estimate reads as nothing', () => {
  for (const missing of [undefined, null, -1, Number.NaN, Infinity, '40']) assert.equal(etaText(missing), '');
});
