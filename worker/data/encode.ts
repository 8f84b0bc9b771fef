/**
 * From records to token sequences: the prompt template, tokenization, label masking and
 * truncation, and padding into micro-batches.
 *
 * A text record becomes `[BOS] prompt(question)` followed by `output [EOS]`; labels are -100 on the
 * prompt and equal the token ids on the output (HF semantics: `labels[t]` is predicted from
 * `input_ids[0..t-1]`). Sequences longer than `maxSeqLen` are cut at the end and counted. BOS is
 * added when the tokenizer's config says so (`add_bos_token`; true when the tokenizer does not say).
 *
 * The template `chat` uses the model's own chat template (tokenizer_config.json `chat_template`,
 * rendered with @huggingface/jinja): the prompt is the conversation `[user: question]` with the
 * assistant's turn opened, the supervised part is what the template adds for `[assistant: output]`
 * (the answer and the template's own end of turn, e.g. `</s>` or `<|eot_id|>`), so no EOS is
 * appended; the rendered text carries its special tokens, so no BOS is added either.
 */
import { CHAT_TEMPLATE_NAME, PROMPT_TEMPLATES } from '../../common/jobspec.js';
import { UserError } from '../../common/errors.js';
import { IGNORE_INDEX, type DataRecord } from '../../common/records.js';

/** What encoding needs of a tokenizer. */
export interface PromptTokenizer {
  encode(text: string, options: { addBos: boolean }): number[];
  readonly eosId: number;
  /** Whether prompts start with BOS (tokenizer_config.json `add_bos_token`). @default true */
  readonly addBosDefault?: boolean;
  /** The model's chat template, for the `chat` template (see ModelTokenizer.renderChat). */
  renderChat?(
    messages: ReadonlyArray<{ role: 'user' | 'assistant'; content: string }>,
    addGenerationPrompt: boolean,
  ): string;
}

/** Prompt and answer ids of a text record through the model's chat template. */
function encodeChat(
  question: string,
  output: string,
  tokenizer: PromptTokenizer,
): { prompt: number[]; answer: number[] } {
  if (!tokenizer.renderChat) throw new UserError(`template ${CHAT_TEMPLATE_NAME}: this tokenizer has no chat template`);
  const user = { role: 'user' as const, content: question };
  const prefix = tokenizer.renderChat([user], true);
  const full = tokenizer.renderChat([user, { role: 'assistant', content: output }], false);
  if (!full.startsWith(prefix)) {
    throw new UserError(
      `template ${CHAT_TEMPLATE_NAME}: the model's chat template does ` +
        `not render the answer after the prompt it renders for generation`,
    );
  }
  return {
    prompt: tokenizer.encode(prefix, { addBos: false }),
    answer: tokenizer.encode(full.slice(prefix.length), { addBos: false }),
  };
}

export interface EncodedSample {
  readonly inputIds: Int32Array;
  readonly labels: Int32Array;
  readonly language: string | undefined;
  /** Tokens with a label other than -100 (each takes loss; labels[0] never does). */
  readonly supervised: number;
  readonly truncated: boolean;
  /** Tokens of the prompt (before the answer) kept in `inputIds`: its last token is at promptLength - 1. */
  readonly promptLength: number;
  /**
   * A second prompt that runs with this sample (a method's paired pass: CC-Tuning's English
   * prompt), token ids of the prompt alone, at most maxSeqLen; absent for other methods.
   */
  readonly pairedPrompt?: Int32Array;
}

/** The template text for a named template, or the literal itself. */
export function resolveTemplate(template: string): string {
  return (PROMPT_TEMPLATES as Record<string, string>)[template] ?? template;
}

export function applyTemplate(template: string, question: string): string {
  return resolveTemplate(template).split('{question}').join(question);
}

function countSupervised(labels: Int32Array): number {
  let n = 0;
  for (let t = 1; t < labels.length; t++) if (labels[t] !== IGNORE_INDEX) n++;
  return n;
}

/** The token ids of a question's prompt alone, as `encodeRecord` starts a text record with it. */
export function encodePrompt(question: string, tokenizer: PromptTokenizer, template: string): number[] {
  if (template === CHAT_TEMPLATE_NAME) {
    if (!tokenizer.renderChat)
      throw new UserError(`template ${CHAT_TEMPLATE_NAME}: this tokenizer has no chat template`);
    return tokenizer.encode(tokenizer.renderChat([{ role: 'user', content: question }], true), { addBos: false });
  }
  return tokenizer.encode(applyTemplate(template, question), { addBos: tokenizer.addBosDefault ?? true });
}

export function encodeRecord(
  record: DataRecord,
  tokenizer: PromptTokenizer,
  template: string,
  maxSeqLen: number,
): EncodedSample {
  let ids: number[];
  let labels: number[];
  let promptLength: number;
  if (record.kind === 'tokens') {
    ids = [...record.inputIds];
    labels = [...record.labels];
    const first = labels.findIndex((l, t) => t > 0 && l !== IGNORE_INDEX);
    promptLength = first < 0 ? ids.length : first;
  } else if (template === CHAT_TEMPLATE_NAME) {
    const { prompt, answer } = encodeChat(record.question, record.output, tokenizer);
    ids = [...prompt, ...answer];
    labels = [...prompt.map(() => IGNORE_INDEX), ...answer];
    promptLength = prompt.length;
  } else {
    const prompt = encodePrompt(record.question, tokenizer, template);
    const output = [...tokenizer.encode(record.output, { addBos: false }), tokenizer.eosId];
    ids = [...prompt, ...output];
    labels = [...prompt.map(() => IGNORE_INDEX), ...output];
    promptLength = prompt.length;
  }
  const truncated = ids.length > maxSeqLen;
  const inputIds = Int32Array.from(truncated ? ids.slice(0, maxSeqLen) : ids);
  const lab = Int32Array.from(truncated ? labels.slice(0, maxSeqLen) : labels);
  return {
    inputIds,
    labels: lab,
    language: record.language,
    supervised: countSupervised(lab),
    truncated,
    promptLength: Math.min(promptLength, inputIds.length),
  };
}

export interface MicroBatch {
  /** Row-major [batchSize, seqLen], right-padded. */
  readonly inputIds: Int32Array;
  readonly labels: Int32Array;
  readonly batchSize: number;
  readonly seqLen: number;
  /** Supervised tokens in the batch. */
  readonly supervised: number;
  /** Non-padding tokens in the batch. */
  readonly tokens: number;
}

/**
 * Right-pad samples to the longest; padding takes label -100, and with causal attention right
 * padding changes nothing for the real tokens, so no attention mask is needed.
 */
export function padBatch(samples: readonly EncodedSample[], padId: number): MicroBatch {
  const seqLen = Math.max(...samples.map((s) => s.inputIds.length));
  const B = samples.length;
  const inputIds = new Int32Array(B * seqLen).fill(padId);
  const labels = new Int32Array(B * seqLen).fill(IGNORE_INDEX);
  let supervised = 0;
  let tokens = 0;
  samples.forEach((s, b) => {
    inputIds.set(s.inputIds, b * seqLen);
    labels.set(s.labels, b * seqLen);
    supervised += s.supervised;
    tokens += s.inputIds.length;
  });
  return { inputIds, labels, batchSize: B, seqLen, supervised, tokens };
}
