/**
 * The records of a `choice` evaluation set (XNLI, MARC as the pruning paper scores them), one JSON
 * object a line:
 *
 *     {"prompt": "Premise: ... Hypothesis: ... Answer:", "choices": [" yes", " maybe", " no"], "label": 0}
 *
 * `label` is the index of the right choice or the right choice itself; `language` is optional (the
 * set's `language` otherwise). Both roles read them: the coordinator to count and check the file
 * at submit, the worker to score (worker/eval/choice.ts). Errors name the file and the line.
 */
import { DataFormatError } from './errors.js';
import { readJsonLines, recordLanguage } from './records.js';

export interface ChoiceRecord {
  readonly prompt: string;
  readonly choices: readonly string[];
  /** Index into `choices`. */
  readonly label: number;
  readonly language: string | undefined;
}

/** At most this many candidates a record (each is a forward pass row). */
export const MAX_CHOICES = 64;

export async function readChoiceRecords(file: string, language?: string): Promise<ChoiceRecord[]> {
  const out: ChoiceRecord[] = [];
  for (const { obj, lineNo } of await readJsonLines(file)) {
    const prompt = obj['prompt'];
    const choices = obj['choices'];
    const label = obj['label'];
    if (typeof prompt !== 'string') throw new DataFormatError(file, '"prompt" must be a string', lineNo);
    if (
      !Array.isArray(choices) ||
      choices.length < 2 ||
      choices.length > MAX_CHOICES ||
      choices.some((c) => typeof c !== 'string' || c === '')
    )
      throw new DataFormatError(file, `"choices" must be 2 to ${MAX_CHOICES} non-empty strings`, lineNo);
    const list = choices as string[];
    const index = typeof label === 'string' ? list.indexOf(label) : label;
    if (typeof index !== 'number' || !Number.isInteger(index) || index < 0 || index >= list.length)
      throw new DataFormatError(file, '"label" must be an index into "choices" or one of them', lineNo);
    out.push({ prompt, choices: list, label: index, language: recordLanguage(file, obj, lineNo, language) });
  }
  if (out.length === 0) throw new DataFormatError(file, 'holds no records');
  return out;
}
