/**
 * `worker score` on a bf16, two-shard checkpoint with GQA (test/golden/llama-gqa-bf16-sharded)
 * against the PyTorch reference's per-record mean NLL: in process, and through the real CLI
 * process (dist/worker/cli.js, built by `npm run build` / the pretest set-up).
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '../../../worker/backend.js';
import { runScore, type ScoreResult } from '../../../worker/commands/score.js';

const ROOT = join(import.meta.dirname, '..', '..', '..');
const DIR = join(ROOT, 'test', 'golden', 'llama-gqa-bf16-sharded');
const CLI = join(ROOT, 'dist', 'worker', 'cli.js');
const TOL = 1e-4;

let want: ScoreResult[];
beforeAll(async () => {
  await initBackend('wasm');
  want = (JSON.parse(await readFile(join(DIR, 'golden.json'), 'utf8')) as { score: ScoreResult[] }).score;
});

function expectMatches(got: ScoreResult[]): void {
  expect(got.map((r) => [r.index, r.tokens])).toEqual(want.map((r) => [r.index, r.tokens]));
  got.forEach((r, i) => expect(Math.abs(r.nll! - want[i]!.nll!) / want[i]!.nll!).toBeLessThan(TOL));
}

describe('worker score on a bf16 two-shard GQA checkpoint', () => {
  it('matches the reference in process (batch 2: right padding inside a batch)', async () => {
    const lines: string[] = [];
    const got = await runScore({
      model: DIR,
      input: join(DIR, 'score.jsonl'),
      json: true,
      batchSize: 2,
      write: (l) => lines.push(l),
    });
    expectMatches(got);
    expect(lines.map((l) => JSON.parse(l) as ScoreResult)).toEqual(got);
  });

  it.skipIf(!existsSync(CLI))('matches the reference through the CLI process', async () => {
    const { stdout } = await promisify(execFile)(process.execPath, [
      CLI,
      'score',
      '--model',
      DIR,
      '--input',
      join(DIR, 'score.jsonl'),
      '--json',
    ]);
    expectMatches(
      stdout
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as ScoreResult),
    );
  });
});
