/** Safetensors files as maps, and their comparison by relative L2 error, for the training tests. */
import { expect } from 'vitest';
import { readSafetensors } from '../../worker/model/safetensors.js';

export async function tensorMap(file: string): Promise<Map<string, Float32Array>> {
  return new Map((await readSafetensors(file)).tensors.map((t) => [t.name, t.data]));
}

/** ||a - b|| / ||a||. */
export function relativeError(a: Float32Array, b: Float32Array): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    num += (a[i]! - b[i]!) ** 2;
    den += a[i]! ** 2;
  }
  return Math.sqrt(num / den);
}

/** The same tensor names, each within `tolerance` relative error. */
export function expectSameTensors(
  expected: Map<string, Float32Array>,
  actual: Map<string, Float32Array>,
  tolerance = 1e-5,
): void {
  expect([...actual.keys()].sort()).toEqual([...expected.keys()].sort());
  for (const [name, x] of expected) expect(relativeError(x, actual.get(name)!), name).toBeLessThan(tolerance);
}
