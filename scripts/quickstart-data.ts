#!/usr/bin/env node
/**
 * Writes the quickstart's training set: templated arithmetic word problems in ten languages
 * (worker/data/word-problems.ts), as alpaca JSON Lines.
 *
 *   node dist/scripts/quickstart-data.js --out FILE [--per-language N] [--seed S]
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { parseArgs } from 'node:util';
import { makeWordProblems, wordProblemsJsonl } from '../worker/data/word-problems.js';

const { values } = parseArgs({
  options: { out: { type: 'string' }, 'per-language': { type: 'string', default: '32' }, seed: { type: 'string', default: '1' } },
});
if (!values.out) {
  process.stderr.write('usage: quickstart-data --out FILE [--per-language N] [--seed S]\n');
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
