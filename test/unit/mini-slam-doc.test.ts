/**
 * docs/experiments/mini-slam.md shows the EvalJobs' own numbers: its table is what the experiment's
 * table code gives for the committed EvalJob JSON (docs/experiments/mini-slam/evals/<arm>.json),
 * and every accuracy cell equals that JSON's `accuracy` (read directly, not through the table code).
 */
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { armRows, TABLE_BEGIN, TABLE_END, type Results } from '../../scripts/mini-slam/run.js';
import { ARM_TITLES, ARMS, type Arm } from '../../scripts/mini-slam/specs.js';
import { accuracyTable, evalJsonSchema, parseResultsTable, type EvalJson } from '../../scripts/mini-slam/table.js';

const DOC = 'docs/experiments/mini-slam.md';
const DIR = 'docs/experiments/mini-slam';

async function readEvals(): Promise<Record<Arm, EvalJson>> {
  const out = {} as Record<Arm, EvalJson>;
  for (const arm of ARMS)
    out[arm] = evalJsonSchema.parse(JSON.parse(await readFile(join(DIR, 'evals', `${arm}.json`), 'utf8')));
  return out;
}

function docTable(doc: string): string {
  const i = doc.indexOf(TABLE_BEGIN);
  const j = doc.indexOf(TABLE_END);
  expect(i, 'the doc has the table markers').toBeGreaterThanOrEqual(0);
  expect(j).toBeGreaterThan(i);
  return doc.slice(i + TABLE_BEGIN.length + 1, j);
}

describe('docs/experiments/mini-slam.md', () => {
  it('has the table the EvalJobs JSON gives', async () => {
    const doc = await readFile(DOC, 'utf8');
    const results = JSON.parse(await readFile(join(DIR, 'results.json'), 'utf8')) as Results;
    const evals = await readEvals();
    expect(docTable(doc)).toBe(accuracyTable(armRows(results, evals)));
  });

  it('shows each language of each arm as the EvalJob JSON says', async () => {
    const parsed = parseResultsTable(docTable(await readFile(DOC, 'utf8')));
    const evals = await readEvals();
    for (const arm of ARMS) {
      const row = parsed.get(ARM_TITLES[arm]);
      expect(row, ARM_TITLES[arm]).toBeDefined();
      for (const l of evals[arm].benchmarks[0]!.languages)
        expect(row!.get(l.language)).toBe(Number((100 * l.accuracy).toFixed(1)));
    }
  });

  it('has its plots as SVG and PNG', async () => {
    for (const name of ['accuracy', 'loss-arms', 'loss-pretrain', 'layer-analysis']) {
      for (const ext of ['svg', 'png']) expect((await stat(join(DIR, `${name}.${ext}`))).size).toBeGreaterThan(1000);
    }
  });
});
