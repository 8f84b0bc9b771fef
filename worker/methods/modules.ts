/**
 * A method's own module tensors (training-method.ts `ModuleTensor`): checked against the model's
 * names and initialised from the job's seed, each from its own stream (the seed and the tensor's
 * name), so that adding a module never changes another's start and every rank starts the same.
 */
import { access } from 'node:fs/promises';
import { ModelLoadError, UserError } from '../../common/errors.js';
import { SeededRandom } from '../model/presets.js';
import { readSafetensors, type NamedTensor } from '../model/safetensors.js';
import type { ModuleSource, ModuleTensor } from './training-method.js';

/** FNV-1a of the name: the per-tensor part of its seed. */
function nameHash(name: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 0x01000193) >>> 0;
  return h;
}

/** The module tensors with their starting values; an error for a name the model has or one repeated. */
export function initModules(
  method: string,
  modules: readonly ModuleTensor[],
  seed: number,
  modelNames: ReadonlySet<string>,
): NamedTensor[] {
  const seen = new Set<string>();
  return modules.map((m) => {
    if (modelNames.has(m.name) || seen.has(m.name)) {
      throw new UserError(
        `method ${method}: module tensor ${m.name} is ${seen.has(m.name) ? 'named twice' : 'an HF parameter name'}`,
      );
    }
    seen.add(m.name);
    const data = new Float32Array(m.shape.reduce((a, b) => a * b, 1));
    if (m.init.kind === 'normal') {
      const rng = new SeededRandom((seed ^ nameHash(m.name)) >>> 0);
      for (let i = 0; i < data.length; i++) data[i] = m.init.std * rng.normal();
    }
    return { name: m.name, shape: [...m.shape], data };
  });
}

/**
 * The module tensors' starting values: from `source.file` when it exists (every tensor by name and
 * shape, else a `ModelLoadError` naming the file: an alignment layer of other sizes is refused
 * there), else from the seed (`initModules`); a `required` source that is missing is an error.
 */
export async function startingModules(
  method: string,
  modules: readonly ModuleTensor[],
  seed: number,
  modelNames: ReadonlySet<string>,
  source: ModuleSource | undefined,
): Promise<{ tensors: NamedTensor[]; fromFile: boolean }> {
  const seeded = initModules(method, modules, seed, modelNames);
  if (!source || modules.length === 0) return { tensors: seeded, fromFile: false };
  const present = await access(source.file).then(
    () => true,
    () => false,
  );
  if (!present) {
    if (source.required) {
      throw new ModelLoadError(source.file, `no such file (method ${method} needs its modules from it)`);
    }
    return { tensors: seeded, fromFile: false };
  }
  const stored = new Map((await readSafetensors(source.file)).tensors.map((t) => [t.name, t]));
  const tensors = seeded.map((m) => {
    const t = stored.get(m.name);
    if (!t) throw new ModelLoadError(source.file, 'tensor missing', { tensor: m.name });
    if (t.shape.join(',') !== m.shape.join(',')) {
      throw new ModelLoadError(
        source.file,
        `shape [${t.shape.join(', ')}] does not fit this run's [${m.shape.join(', ')}] ` +
          '(the encoder, the LLM or the alignment block differ from the ones it was trained with)',
        { tensor: m.name },
      );
    }
    return t;
  });
  return { tensors, fromFile: true };
}
