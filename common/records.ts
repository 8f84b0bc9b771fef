/**
 * Readers for the training data formats of DESIGN.md. Both sides use them: the coordinator to
 * validate the files and count the samples before it accepts a job, the worker to train.
 * Errors name the file and the line.
 *
 * | format    | a record                                                                    |
 * |-----------|-----------------------------------------------------------------------------|
 * | alpaca    | JSONL: instruction|question|query, optional input, output|answer|response, optional language |
 * | tokenized | JSONL: input_ids and labels, same length, -100 where no loss is taken       |
 * | mgsm-tsv  | question<TAB>answer, no header                                              |
 * | msvamp    | JSONL: m_query, response                                                    |
 * | parallel  | two line-aligned text files (`path`, `target`): source in, target out       |
 * | parallel + `answers` | three line-aligned files: `path` the non-English prompt, `target` its |
 * |           | English prompt, `answers` the output (CC-Tuning's paired records)             |
 * | cctuning  | JSONL: instruction, optional input, output, instruction_en, optional input_en, language |
 * | codeswitch | English text (lines, or a JSONL `field`) code-switched on the fly with a `dictionary` (codeswitch.ts), or pre-built JSONL: `codeswitched`, `text` |
 */
import { readFile } from 'node:fs/promises';
import { codeSwitch, codeSwitchSeed, readDictionary, type CodeSwitchDictionary } from './codeswitch.js';
import { DataFormatError, jsonSyntaxProblem } from './errors.js';
import type { DataSource } from './jobspec.js';
import { LANGUAGE_CODE } from './spec-primitives.js';

/** A prompt/response pair, to be templated and tokenized by the worker. */
export interface TextRecord {
  readonly kind: 'text';
  readonly question: string;
  readonly output: string;
  /** ISO 639 code, from the record or its source; undefined when neither says. */
  readonly language: string | undefined;
  /**
   * The same prompt in English (`cctuning` records, `parallel` with `answers`): a method that runs
   * a paired pass (CC-Tuning) encodes it with the record, so the pair always runs on one worker.
   */
  readonly questionEn?: string;
  /**
   * `format: codeswitch` with a dictionary: `question` (and `output`) are the original text, and
   * each epoch's question is code-switched from it (`materialiseRecord`).
   */
  readonly codeSwitch?: { readonly dictionary: CodeSwitchDictionary; readonly ratio: number };
}

/** The default share of a dictionary's words that `format: codeswitch` replaces. */
export const DEFAULT_CODESWITCH_RATIO = 0.3;

/**
 * The record as epoch `epoch` sees it: a code-switched record's question switched afresh (seeded
 * by the job seed, the epoch and the record index), any other record as it is.
 */
export function materialiseRecord(record: DataRecord, seed: number, epoch: number, index: number): DataRecord {
  if (record.kind !== 'text' || !record.codeSwitch) return record;
  const { dictionary, ratio } = record.codeSwitch;
  const switched = codeSwitch(record.question, dictionary, ratio, codeSwitchSeed(seed, epoch, index));
  return { kind: 'text', question: switched.text, output: record.output, language: record.language };
}

/** Already tokenized: HF semantics, `labels[t]` is predicted from `inputIds[0..t-1]`. */
export interface TokenRecord {
  readonly kind: 'tokens';
  readonly inputIds: readonly number[];
  readonly labels: readonly number[];
  readonly language: string | undefined;
}

export type DataRecord = TextRecord | TokenRecord;

/** Lines parsed between two turns of the event loop. */
const YIELD_LINES = 2048;

/** A big file is parsed in slices: every `YIELD_LINES` lines the event loop gets a turn (heartbeats keep flowing). */
async function sliceBreak(lineIndex: number): Promise<void> {
  if ((lineIndex + 1) % YIELD_LINES === 0) await new Promise<void>((resolve) => setImmediate(resolve));
}

/** The label value that takes no loss (HF's ignore_index). */
export const IGNORE_INDEX = -100;

function lines(text: string): string[] {
  const out = text.split(/\r?\n/);
  if (out.length > 0 && out[out.length - 1] === '') out.pop();
  return out;
}

function firstString(obj: Record<string, unknown>, keys: readonly string[]): string | undefined {
  for (const k of keys) {
    const v = obj[k];
    if (typeof v === 'string') return v;
    if (typeof v === 'number') return String(v);
  }
  return undefined;
}

function parseJsonLine(file: string, line: string, lineNo: number): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch (e) {
    throw new DataFormatError(file, jsonSyntaxProblem(e), lineNo);
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new DataFormatError(file, 'expected a JSON object', lineNo);
  }
  return value as Record<string, unknown>;
}

function intArray(file: string, obj: Record<string, unknown>, key: string, lineNo: number): number[] {
  const v = obj[key];
  if (!Array.isArray(v) || v.some((x) => typeof x !== 'number' || !Number.isInteger(x))) {
    throw new DataFormatError(file, `"${key}" must be an array of integers`, lineNo);
  }
  return v as number[];
}

async function readText(file: string): Promise<string> {
  try {
    return await readFile(file, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new DataFormatError(file, code === 'ENOENT' ? 'no such file' : `cannot read (${(e as Error).message})`);
  }
}

/**
 * A record's own `language`, checked with the spec's rule (an ISO 639 code such as "sw": it becomes
 * a metric label and a report key), else the source's `fallback`; errors name `file:lineNo`.
 */
export function recordLanguage(
  file: string,
  obj: Record<string, unknown>,
  lineNo: number,
  fallback: string | undefined,
): string | undefined {
  const v = obj['language'];
  if (v === undefined || v === null) return fallback;
  if (typeof v !== 'string' || !LANGUAGE_CODE.test(v))
    throw new DataFormatError(
      file,
      '"language" must be an ISO 639 code such as "sw" (2 or 3 lowercase letters)',
      lineNo,
    );
  return v;
}

/** A JSON Lines format: one object a line. */
export type JsonlFormat = 'alpaca' | 'tokenized' | 'msvamp' | 'cctuning';

/** One JSON Lines record of `format`; errors name `file:lineNo`. */
export function recordFromJson(
  file: string,
  obj: Record<string, unknown>,
  lineNo: number,
  format: JsonlFormat,
  language: string | undefined,
): DataRecord {
  switch (format) {
    case 'alpaca': {
      const instruction = firstString(obj, ['instruction', 'question', 'query']);
      const output = firstString(obj, ['output', 'answer', 'response']);
      if (instruction === undefined)
        throw new DataFormatError(file, 'missing "instruction" (or "question", "query")', lineNo);
      if (output === undefined) throw new DataFormatError(file, 'missing "output" (or "answer", "response")', lineNo);
      const input = firstString(obj, ['input']);
      const lang = recordLanguage(file, obj, lineNo, language);
      return { kind: 'text', question: input ? `${instruction}\n${input}` : instruction, output, language: lang };
    }
    case 'cctuning': {
      const instruction = firstString(obj, ['instruction']);
      const output = firstString(obj, ['output']);
      const instructionEn = firstString(obj, ['instruction_en']);
      if (instruction === undefined) throw new DataFormatError(file, 'missing "instruction"', lineNo);
      if (output === undefined) throw new DataFormatError(file, 'missing "output"', lineNo);
      if (instructionEn === undefined)
        throw new DataFormatError(file, 'missing "instruction_en" (the English instruction of the pair)', lineNo);
      const input = firstString(obj, ['input']);
      const inputEn = firstString(obj, ['input_en']) ?? input;
      return {
        kind: 'text',
        question: input ? `${instruction}\n${input}` : instruction,
        questionEn: inputEn ? `${instructionEn}\n${inputEn}` : instructionEn,
        output,
        language: recordLanguage(file, obj, lineNo, language),
      };
    }
    case 'msvamp': {
      const question = firstString(obj, ['m_query']);
      const output = firstString(obj, ['response']);
      if (question === undefined) throw new DataFormatError(file, 'missing "m_query"', lineNo);
      if (output === undefined) throw new DataFormatError(file, 'missing "response"', lineNo);
      return { kind: 'text', question, output, language };
    }
    case 'tokenized': {
      const inputIds = intArray(file, obj, 'input_ids', lineNo);
      const labels = intArray(file, obj, 'labels', lineNo);
      if (inputIds.length !== labels.length) {
        throw new DataFormatError(
          file,
          `input_ids (${inputIds.length}) and labels (${labels.length}) differ in length`,
          lineNo,
        );
      }
      if (inputIds.length < 2) throw new DataFormatError(file, 'a record needs at least 2 tokens', lineNo);
      if (inputIds.some((t) => t < 0)) throw new DataFormatError(file, 'input_ids must be >= 0', lineNo);
      if (labels.some((t) => t < 0 && t !== IGNORE_INDEX))
        throw new DataFormatError(file, `labels must be >= 0 or ${IGNORE_INDEX}`, lineNo);
      return { kind: 'tokens', inputIds, labels, language: recordLanguage(file, obj, lineNo, language) };
    }
  }
}

/** The objects of a JSON Lines file with their 1-based line numbers; blank lines are skipped. */
export async function readJsonLines(file: string): Promise<{ obj: Record<string, unknown>; lineNo: number }[]> {
  const out: { obj: Record<string, unknown>; lineNo: number }[] = [];
  const all = lines(await readText(file));
  for (const [i, line] of all.entries()) {
    if (line.trim() !== '') out.push({ obj: parseJsonLine(file, line, i + 1), lineNo: i + 1 });
    await sliceBreak(i);
  }
  return out;
}

/** Read every record of one data source, in file order. Blank lines are skipped. */
export async function readDataSource(
  src: Pick<DataSource, 'path' | 'format' | 'language' | 'target' | 'answers'> &
    Partial<Pick<DataSource, 'dictionary' | 'ratio' | 'field'>>,
): Promise<DataRecord[]> {
  const file = src.path;
  const records: DataRecord[] = [];
  switch (src.format) {
    case 'alpaca':
    case 'msvamp':
    case 'tokenized':
    case 'cctuning':
      for (const { obj, lineNo } of await readJsonLines(file))
        records.push(recordFromJson(file, obj, lineNo, src.format, src.language));
      break;
    case 'mgsm-tsv':
      for (const [i, line] of lines(await readText(file)).entries()) {
        await sliceBreak(i);
        if (line.trim() === '') continue;
        const tab = line.lastIndexOf('\t');
        if (tab <= 0) throw new DataFormatError(file, 'expected question<TAB>answer', i + 1);
        records.push({
          kind: 'text',
          question: line.slice(0, tab),
          output: line.slice(tab + 1).trim(),
          language: src.language,
        });
      }
      break;
    case 'parallel': {
      if (src.target === undefined) throw new DataFormatError(file, 'format parallel needs a target file');
      const sources = lines(await readText(file));
      const aligned = async (other: string): Promise<string[]> => {
        const out = lines(await readText(other));
        if (out.length !== sources.length) {
          throw new DataFormatError(
            other,
            `has ${out.length} lines but ${file} has ${sources.length}: parallel files must be line-aligned`,
          );
        }
        return out;
      };
      const targets = await aligned(src.target);
      // With `answers`: the pair is a prompt and its English version, the answers their output.
      const answers = src.answers === undefined ? undefined : await aligned(src.answers);
      for (const [i, line] of sources.entries()) {
        await sliceBreak(i);
        const target = targets[i] ?? '';
        const answer = answers?.[i];
        if (line.trim() === '' && target.trim() === '' && (answer ?? '').trim() === '') continue;
        if (line.trim() === '' || target.trim() === '')
          throw new DataFormatError(file, 'one side of a parallel pair is empty', i + 1);
        if (answer === undefined) {
          records.push({ kind: 'text', question: line, output: target, language: src.language });
        } else {
          if (answer.trim() === '') throw new DataFormatError(src.answers!, 'the answer is empty', i + 1);
          records.push({ kind: 'text', question: line, questionEn: target, output: answer, language: src.language });
        }
      }
      break;
    }
    case 'codeswitch':
      records.push(...(await readCodeSwitch(src)));
      break;
  }
  if (records.length === 0) throw new DataFormatError(file, 'holds no records');
  return records;
}

/**
 * `format: codeswitch`: with a dictionary, the English texts (lines of `path`, or its JSONL
 * `field`), each to be switched per epoch; without, pre-built JSONL (`codeswitched` in, `text` out).
 */
async function readCodeSwitch(
  src: Pick<DataSource, 'path' | 'language'> & Partial<Pick<DataSource, 'dictionary' | 'ratio' | 'field'>>,
): Promise<DataRecord[]> {
  const file = src.path;
  const language = src.language;
  if (src.dictionary === undefined) {
    return (await readJsonLines(file)).map(({ obj, lineNo }) => {
      const question = firstString(obj, ['codeswitched']);
      const output = firstString(obj, ['text']);
      if (question === undefined) throw new DataFormatError(file, 'missing "codeswitched"', lineNo);
      if (output === undefined) throw new DataFormatError(file, 'missing "text"', lineNo);
      return { kind: 'text', question, output, language: recordLanguage(file, obj, lineNo, language) };
    });
  }
  const codeSwitch = { dictionary: await readDictionary(src.dictionary), ratio: src.ratio ?? DEFAULT_CODESWITCH_RATIO };
  const texts: string[] = [];
  if (src.field === undefined) {
    for (const [i, line] of lines(await readText(file)).entries()) {
      await sliceBreak(i);
      if (line.trim() !== '') texts.push(line);
    }
  } else {
    for (const { obj, lineNo } of await readJsonLines(file)) {
      const text = firstString(obj, [src.field]);
      if (text === undefined) throw new DataFormatError(file, `missing "${src.field}" (spec field)`, lineNo);
      texts.push(text);
    }
  }
  return texts.map((text) => ({ kind: 'text', question: text, output: text, language, codeSwitch }));
}
