/**
 * A method's own module tensors (training-method.ts `ModuleTensor`): checked against the model's
 * names and initialised from the job's seed, each from its own stream (the seed and the tensor's
 * name), so that adding a module never changes another's start and every rank starts the same.
 */
import { UserError } from '../../common/errors.js';
import { SeededRandom } from '../model/presets.js';
import type { NamedTensor } from '../model/safetensors.js';
import type { ModuleTensor } from './training-method.js';

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
