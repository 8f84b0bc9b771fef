/**
 * The calibration samples of a PruneJob, as token ids, in the order common/prune-spec.ts defines
 * (source by source; a parallel source's sample n is its pairs n*shots .. n*shots+shots-1).
 *
 * A demonstration is the authors' `get_mt` text, `"{Src}: {src}</s>{Tgt}: {tgt}</s>"` once per
 * shot, with the tokenizer's own EOS token for `</s>` and the language names in English
 * (`Intl.DisplayNames`: sw -> Swahili), tokenized whole with the model's default BOS, as
 * `tokenizer([prompt_text])` does, then cut at `maxSeqLen`. No padding: each sample is run alone,
 * and its statistics cover its own tokens only (the authors pad to max_length and count the pads).
 */
import { UserError } from '../../common/errors.js';
import type { CalibrationSpec } from '../../common/prune-spec.js';
import { samplesPerSource } from '../../common/prune-spec.js';
import { readDataSource, type DataRecord } from '../../common/records.js';
import type { ModelTokenizer } from '../model/tokenizer.js';

const languageNames = new Intl.DisplayNames(['en'], { type: 'language' });

/** "Swahili" for "sw"; the code itself when the runtime does not know it. */
export function languageName(code: string): string {
  try {
    return languageNames.of(code) ?? code;
  } catch {
    return code;
  }
}

/** The text of one demonstration of `shots` pairs. */
export function demonstrationText(
  pairs: readonly { src: string; tgt: string }[],
  srcLanguage: string,
  tgtLanguage: string,
  eos: string,
): string {
  const s = languageName(srcLanguage);
  const t = languageName(tgtLanguage);
  return pairs.map((p) => `${s}: ${p.src}${eos}${t}: ${p.tgt}${eos}`).join('');
}

/**
 * Every sample's ids, in sample order, each below the model's `vocabSize` (a tokenized record's ids
 * are checked naming the file and record). `tokenizer` is needed only for parallel sources.
 */
export async function calibrationSamples(
  c: CalibrationSpec,
  vocabSize: number,
  tokenizer: () => Promise<ModelTokenizer>,
): Promise<Int32Array[]> {
  const checked = (ids: Int32Array, where: string): Int32Array => {
    const bad = ids.find((t) => t >= vocabSize);
    if (bad !== undefined)
      throw new UserError(`${where}: token id ${bad} is outside the model's vocabulary [0, ${vocabSize})`);
    return ids;
  };
  const shares = samplesPerSource(c);
  const out: Int32Array[] = [];
  for (const [i, src] of c.sources.entries()) {
    const records: DataRecord[] = await readDataSource(src);
    const share = shares[i]!;
    if (src.format === 'tokenized') {
      for (let n = 0; n < share; n++) {
        const r = records[n];
        if (r?.kind !== 'tokens') throw new Error(`${src.path}: record ${n + 1} is missing or not tokenized`);
        out.push(checked(Int32Array.from(r.inputIds.slice(0, c.maxSeqLen)), `${src.path}: record ${n + 1}`));
      }
      continue;
    }
    const tok = await tokenizer();
    if (tok.eosId === undefined) throw new Error('the model has no EOS token for the demonstrations');
    const eos = tok.decode([tok.eosId], { skipSpecial: false });
    for (let n = 0; n < share; n++) {
      const pairs = records.slice(n * c.shots, (n + 1) * c.shots).map((r) => {
        if (r.kind !== 'text') throw new Error(`${src.path}: not a text pair`);
        return { src: r.question, tgt: r.output };
      });
      if (pairs.length < c.shots) throw new Error(`${src.path}: fewer than ${(n + 1) * c.shots} pairs`);
      const text = demonstrationText(pairs, src.language ?? 'und', src.targetLanguage ?? 'en', eos);
      const ids = Int32Array.from(tok.encode(text, { addEos: false }).slice(0, c.maxSeqLen));
      out.push(checked(ids, `${src.path}: the tokenizer's demonstration ${n + 1}`));
    }
  }
  return out;
}
