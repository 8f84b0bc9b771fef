/**
 * A LLaMA-family BPE tokenizer cut to the tokens a corpus uses, for a model small enough to
 * pretrain on a CPU: its embedding and output head shrink from 32000 rows to a few hundred.
 *
 * The cut keeps, of the source `tokenizer.json` (sentencepiece-style BPE with byte fallback, as
 * Mistral-7B's and LLaMA-2's):
 * - the added (special) tokens and the 256 byte-fallback tokens `<0x00>`..`<0xFF>`, so any text
 *   still encodes;
 * - every token the corpus encodes to, and, recursively, the two parts of every merge that makes a
 *   kept token (its BPE ancestors);
 * - the merges whose two parts and result are all kept, in their original order.
 *
 * Ids are renumbered densely in the original order. On the corpus the cut tokenizer gives exactly
 * the source's tokens: BPE applies the lowest-ranked applicable merge, every merge the source
 * applied is kept (its result is an output token or an ancestor of one), and kept merges are a
 * subset with the same ranks. `cutTokenizer` checks this on the whole corpus and throws otherwise.
 */
import { Tokenizer } from '@huggingface/tokenizers';

type Json = Record<string, unknown>;

export interface CutTokenizer {
  /** The new `tokenizer.json`. */
  readonly json: Json;
  /** Tokens in the new vocabulary (the model's `vocab_size`). */
  readonly vocabSize: number;
  /** Tokens of the source vocabulary. */
  readonly sourceVocabSize: number;
}

function mergePair(m: unknown, i: number): [string, string] {
  if (Array.isArray(m) && m.length === 2 && typeof m[0] === 'string' && typeof m[1] === 'string') return [m[0], m[1]];
  if (typeof m === 'string') {
    const sp = m.indexOf(' ');
    if (sp > 0) return [m.slice(0, sp), m.slice(sp + 1)];
  }
  throw new Error(`tokenizer.json: model.merges[${i}] is neither "a b" nor ["a", "b"]`);
}

function tokensOf(tok: Tokenizer, text: string): string[] {
  return tok.encode(text, { add_special_tokens: false }).tokens;
}

/** `source` cut to what `corpus` uses (see the module doc). `config`: the tokenizer_config.json. */
export function cutTokenizer(source: Json, config: Json, corpus: Iterable<string>): CutTokenizer {
  const model = source['model'] as Json | undefined;
  if (!model || model['type'] !== 'BPE') throw new Error('tokenizer.json: only a BPE model can be cut');
  const vocab = model['vocab'] as Record<string, number>;
  const merges = (model['merges'] as unknown[]).map(mergePair);
  const added = (source['added_tokens'] as Json[]) ?? [];
  const texts = [...corpus];
  const full = new Tokenizer(source, config);

  const producers = new Map<string, [string, string][]>();
  for (const [a, b] of merges) {
    const list = producers.get(a + b) ?? [];
    list.push([a, b]);
    producers.set(a + b, list);
  }
  const keep = new Set<string>(added.map((t) => t['content'] as string));
  for (let byte = 0; byte < 256; byte++) keep.add(`<0x${byte.toString(16).toUpperCase().padStart(2, '0')}>`);
  const queue: string[] = [];
  const add = (t: string): void => {
    if (keep.has(t)) return;
    if (vocab[t] === undefined) throw new Error(`tokenizer.json: token ${JSON.stringify(t)} is not in model.vocab`);
    keep.add(t);
    queue.push(t);
  };
  for (const text of texts) for (const t of tokensOf(full, text)) add(t);
  while (queue.length > 0) {
    const t = queue.pop()!;
    for (const [a, b] of producers.get(t) ?? []) {
      add(a);
      add(b);
    }
  }
  const kept = [...keep].filter((t) => vocab[t] !== undefined).sort((x, y) => vocab[x]! - vocab[y]!);
  const newVocab: Record<string, number> = {};
  kept.forEach((t, i) => (newVocab[t] = i));
  const newMerges = merges
    .filter(([a, b]) => keep.has(a) && keep.has(b) && keep.has(a + b))
    .map(([a, b]) => `${a} ${b}`);
  const newAdded = added.map((t) => {
    const id = newVocab[t['content'] as string];
    if (id === undefined)
      throw new Error(`tokenizer.json: added token ${JSON.stringify(t['content'])} is not in the vocabulary`);
    return { ...t, id };
  });
  const json: Json = { ...source, added_tokens: newAdded, model: { ...model, vocab: newVocab, merges: newMerges } };
  // The post-processor names specials by id (TemplateProcessing's special_tokens): renumber them.
  const post = source['post_processor'] as Json | null | undefined;
  if (post && typeof post['special_tokens'] === 'object' && post['special_tokens'] !== null) {
    const specials: Record<string, Json> = {};
    for (const [name, s] of Object.entries(post['special_tokens'] as Record<string, Json>)) {
      const toks = s['tokens'] as string[];
      specials[name] = { ...s, ids: toks.map((t) => newVocab[t] ?? -1) };
    }
    json['post_processor'] = { ...post, special_tokens: specials };
  }

  const cut = new Tokenizer(json, config);
  for (const text of texts) {
    const a = tokensOf(full, text).join('\u0000');
    const b = tokensOf(cut, text).join('\u0000');
    if (a !== b) throw new Error(`the cut tokenizer encodes ${JSON.stringify(text.slice(0, 80))} differently`);
  }
  return { json, vocabSize: kept.length, sourceVocabSize: Object.keys(vocab).length };
}
