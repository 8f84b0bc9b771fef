/**
 * `worker score --model DIR --input FILE.jsonl [--json]`: the mean NLL of each record's supervised
 * tokens. A record is `tokenized` (`input_ids`, `labels`) or alpaca-like (`instruction` |
 * `question` | `query`, optional `input`, `output` | `answer` | `response`); alpaca records use the
 * training encoding (worker/data/encode.ts) with the `slam` template
 * `Human: {question}\nAssistant: `: BOS + prompt unsupervised, the output and EOS supervised.
 * With `--json`, one line per record in input order: `{"index":0,"nll":2.31,"tokens":17}`
 * (`nll` is null for a record without supervised tokens).
 */
import * as tf from '@tensorflow/tfjs-core';
import { DataFormatError, ModelLoadError } from '../../common/errors.js';
import { silentLogger, type Logger } from '../../common/logging.js';
import { readJsonLines, recordFromJson, type DataRecord } from '../../common/records.js';
import { encodeRecord, padBatch, type EncodedSample, type PromptTokenizer } from '../data/encode.js';
import { eosIds } from '../../common/model-config.js';
import { LlamaModel } from '../model/llama.js';
import { ModelTokenizer } from '../model/tokenizer.js';

export interface ScoreOptions {
  model: string;
  input: string;
  /** One JSON object per line instead of readable lines. @default false */
  json?: boolean;
  write: (line: string) => void;
  /** Records per forward pass. @default DEFAULT_SCORE_BATCH */
  batchSize?: number;
  /**
   * Prompt template for text records: a name (`slam`, `alpaca`, or `chat` for the model's own chat
   * template) or a literal with {question}. @default 'slam'
   */
  template?: string;
  /** Longer records are cut at the end. @default config.max_position_embeddings */
  maxSeqLen?: number;
  logger?: Logger;
  signal?: AbortSignal;
}

export interface ScoreResult {
  index: number;
  /** Mean NLL over the supervised tokens (null when there are none). */
  nll: number | null;
  tokens: number;
}

/** @default 8 */
export const DEFAULT_SCORE_BATCH = 8;

/** Reads the JSONL input: a record with `input_ids` is tokenized, any other is alpaca-like. */
export async function readScoreRecords(file: string): Promise<DataRecord[]> {
  const records = (await readJsonLines(file)).map(({ obj, lineNo }) =>
    recordFromJson(file, obj, lineNo, 'input_ids' in obj ? 'tokenized' : 'alpaca', undefined),
  );
  if (records.length === 0) throw new DataFormatError(file, 'holds no records');
  return records;
}

export async function runScore(options: ScoreOptions): Promise<ScoreResult[]> {
  const log = options.logger ?? silentLogger;
  const records = await readScoreRecords(options.input);
  const model = await LlamaModel.load(options.model, { logger: log });
  try {
    const V = model.config.vocabSize;
    const maxSeqLen = options.maxSeqLen ?? model.config.maxPositionEmbeddings;
    // The tokenizer is needed only for text records: a directory with weights and config alone
    // can score `tokenized` records.
    const needsText = records.some((r) => r.kind === 'text');
    const tokenizer = needsText ? await ModelTokenizer.load(options.model, model.config) : undefined;
    const eosId = tokenizer ? tokenizer.eosId : (eosIds(model.config)[0] ?? undefined);
    if (needsText && eosId === undefined) throw new ModelLoadError(options.model, 'the tokenizer has no EOS token');
    const encoder: PromptTokenizer = {
      encode: (t, o) => tokenizer!.encode(t, o),
      eosId: eosId ?? 0,
      addBosDefault: tokenizer?.addBosDefault ?? true,
      renderChat: (m, g) => tokenizer!.renderChat(m, g),
    };
    const samples: EncodedSample[] = records.map((r, i) => {
      const s = encodeRecord(r, encoder, options.template ?? 'slam', maxSeqLen);
      const bad = s.inputIds.find((t) => t >= V) ?? s.labels.find((t) => t >= V);
      if (bad !== undefined)
        throw new DataFormatError(options.input, `token id ${bad} is outside the vocabulary [0, ${V})`, i + 1);
      return s;
    });
    // Batches of similar lengths waste less on padding; results go out in input order.
    const order = samples.map((_, i) => i).sort((a, b) => samples[a]!.inputIds.length - samples[b]!.inputIds.length);
    const batchSize = Math.max(1, options.batchSize ?? DEFAULT_SCORE_BATCH);
    const results = new Array<ScoreResult>(samples.length);
    const padId = tokenizer?.padId ?? model.config.padTokenId ?? eosId ?? 0;
    for (let s = 0; s < order.length; s += batchSize) {
      if (options.signal?.aborted) throw options.signal.reason ?? new Error('scoring aborted');
      const idx = order.slice(s, s + batchSize);
      const mb = padBatch(
        idx.map((i) => samples[i]!),
        padId,
      );
      const r = tf.tidy(() =>
        model.nllPerRow(
          tf.tensor2d(mb.inputIds, [mb.batchSize, mb.seqLen], 'int32'),
          tf.tensor2d(mb.labels, [mb.batchSize, mb.seqLen], 'int32'),
        ),
      );
      idx.forEach((i, b) => {
        const tokens = r.tokens[b]!;
        results[i] = { index: i, nll: tokens > 0 ? r.nll[b]! / tokens : null, tokens };
      });
      await new Promise((resolve) => setImmediate(resolve));
    }
    let sum = 0;
    let count = 0;
    for (const r of results) {
      if (options.json) options.write(JSON.stringify(r));
      else options.write(`record ${r.index}: nll ${r.nll === null ? '-' : r.nll.toFixed(4)} over ${r.tokens} tokens`);
      if (r.nll !== null) {
        sum += r.nll * r.tokens;
        count += r.tokens;
      }
    }
    if (!options.json)
      options.write(
        `mean nll ${count > 0 ? (sum / count).toFixed(4) : '-'} over ${count} tokens in ${results.length} records`,
      );
    return results;
  } finally {
    model.dispose();
  }
}
