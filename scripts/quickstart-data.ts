#!/usr/bin/env node
/**
 * Writes the quickstart's training set: templated arithmetic word problems in ten languages
 * (worker/data/word-problems.ts), as alpaca JSON Lines.
 *
 *   node dist/scripts/quickstart-data.js --out FILE [--per-language N] [--seed S] [--parallel-dir DIR]
 *
 * With `--parallel-dir`, also the same problems' question translation, for the two-stage config
 * (configs/two-stage-tiny.yaml): `DIR/<lang>.txt` and `DIR/<lang>.en.txt`, line-aligned, for each
 * language but English.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { parseArgs } from 'node:util';
import { makeWordProblems, questionTranslationTexts, wordProblemsJsonl } from '../worker/data/word-problems.js';

const { values } = parseArgs({
  options: {
    out: { type: 'string' },
    'per-language': { type: 'string', default: '32' },
    seed: { type: 'string', default: '1' },
    'parallel-dir': { type: 'string' },
  },
});
if (!values.out) {
  process.stderr.write('usage: quickstart-data --out FILE [--per-language N] [--seed S] [--parallel-dir DIR]\n');
  process.exit(2);
}
const perLanguage = Number(values['per-language']);
const seed = Number(values.seed);
if (!Number.isInteger(perLanguage) || perLanguage <= 0) {
  process.stderr.write(`--per-language: must be a positive integer, got ${values['per-language']}\n`);
  process.exit(2);
}
const problems = makeWordProblems(perLanguage, seed);
await mkdir(dirname(values.out), { recursive: true });
await writeFile(values.out, wordProblemsJsonl(problems));
process.stdout.write(`wrote ${problems.length} word problems in 10 languages to ${values.out}\n`);
const parallelDir = values['parallel-dir'];
if (parallelDir) {
  await mkdir(parallelDir, { recursive: true });
  const texts = questionTranslationTexts(problems);
  for (const [language, t] of texts) {
    await writeFile(join(parallelDir, `${language}.txt`), t.source);
    await writeFile(join(parallelDir, `${language}.en.txt`), t.target);
  }
  process.stdout.write(`wrote question translation into English for ${texts.size} languages to ${parallelDir}\n`);
}
