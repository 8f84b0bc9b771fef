/**
 * Storage roots: the directories a job's spec may name (`--storage-root DIR`, repeatable, on the
 * coordinator and on every worker; `$POLYTUNE_STORAGE_ROOTS`, ':'-separated, when no flag is given).
 * A path the job reads must lie under a root and a directory it writes strictly inside one, after
 * symbolic links are resolved (the real path of the longest existing prefix, so a link out of a
 * root is refused even when the file under it does not exist yet). No roots: no confinement.
 *
 * Which fields are paths is not listed here: every field of the kind's schema whose schema is
 * registered in `specPathFields` (`pathString`: read, `outputDirString`: written) is found by
 * walking the schema beside the parsed spec, wherever it sits (stages, methods, eval sets, a new
 * kind's block). The same function runs at submit (coordinator/job-files.ts) and on the worker when
 * an assignment arrives (worker/run-worker.ts), since a worker may be sent a forged one.
 */
import { realpath } from 'node:fs/promises';
import { basename, delimiter, dirname, isAbsolute, join, relative, resolve, sep } from 'node:path';
import type { z } from 'zod';
import { JobSpecError, type SpecIssue } from './errors.js';
import { errnoCode } from './fs-checks.js';
import { jobKindOf, type AnyJobSpec } from './job-kinds.js';
import { specPathFields } from './spec-primitives.js';

export const STORAGE_ROOT_FLAG = '--storage-root';
export const STORAGE_ROOTS_ENV = 'POLYTUNE_STORAGE_ROOTS';

/** Real paths of the roots; empty: any path is allowed. */
export type StorageRoots = readonly string[];

/** A path field of a spec: its field path (`spec.data.train[0].path`), value, and read or written. */
export interface SpecPath {
  readonly at: string;
  readonly path: string;
  readonly kind: 'input' | 'output';
}

/** The roots given: the flag's values, else `$POLYTUNE_STORAGE_ROOTS` split on ':'. */
export function storageRootsGiven(flagValues: readonly string[] | undefined, env = process.env): string[] {
  if (flagValues && flagValues.length > 0) return [...flagValues];
  return (env[STORAGE_ROOTS_ENV] ?? '').split(delimiter).filter((d) => d !== '');
}

/** Resolves the roots once, at start (each must exist): their real paths. */
export async function resolveStorageRoots(dirs: readonly string[]): Promise<string[]> {
  const out: string[] = [];
  for (const d of dirs) {
    try {
      out.push(await realpath(resolve(d)));
    } catch (e) {
      throw new JobSpecError([{ path: STORAGE_ROOT_FLAG, message: `${d}: ${errnoCode(e, 'cannot resolve')}` }]);
    }
  }
  return out;
}

/** What the walk reads of a zod schema's definition (zod 4's `_zod.def`). */
interface SchemaDef {
  type: string;
  shape?: Record<string, z.ZodType>;
  element?: z.ZodType;
  innerType?: z.ZodType;
  in?: z.ZodType;
  options?: z.ZodType[];
  left?: z.ZodType;
  right?: z.ZodType;
  valueType?: z.ZodType;
  items?: z.ZodType[];
  rest?: z.ZodType | null;
  getter?: () => z.ZodType;
}

const defOf = (schema: z.ZodType): SchemaDef => (schema as unknown as { _zod: { def: SchemaDef } })._zod.def;

/**
 * Every string of `value` whose schema in `schema` is a registered path field, with its field
 * path. A union's options are all walked (a field is a path if it is one in any option).
 */
export function markedPaths(schema: z.ZodType, value: unknown, at = ''): SpecPath[] {
  const out = new Map<string, SpecPath>();
  const walk = (s: z.ZodType, v: unknown, path: string): void => {
    if (v === undefined || v === null) return;
    const meta = specPathFields.get(s);
    if (meta && typeof v === 'string') {
      out.set(path, { at: path, path: v, kind: meta.specPath });
      return;
    }
    const d = defOf(s);
    const key = (k: string | number): string =>
      typeof k === 'number' ? `${path}[${k}]` : path === '' ? k : `${path}.${k}`;
    switch (d.type) {
      case 'object':
        if (typeof v === 'object' && !Array.isArray(v))
          for (const [k, sub] of Object.entries(d.shape ?? {})) walk(sub, (v as Record<string, unknown>)[k], key(k));
        return;
      case 'array':
        if (Array.isArray(v)) v.forEach((x, i) => walk(d.element!, x, key(i)));
        return;
      case 'tuple':
        if (Array.isArray(v))
          v.forEach((x, i) => {
            const sub = d.items?.[i] ?? d.rest;
            if (sub) walk(sub, x, key(i));
          });
        return;
      case 'record':
        if (typeof v === 'object' && !Array.isArray(v))
          for (const [k, x] of Object.entries(v as Record<string, unknown>)) walk(d.valueType!, x, key(k));
        return;
      case 'union':
        for (const o of d.options ?? []) walk(o, v, path);
        return;
      case 'intersection':
        walk(d.left!, v, path);
        walk(d.right!, v, path);
        return;
      case 'pipe':
        walk(d.in!, v, path);
        return;
      case 'lazy':
        walk(d.getter!(), v, path);
        return;
      default:
        // optional, nullable, default, prefault, readonly, catch, nonoptional: the wrapped schema.
        if (d.innerType) walk(d.innerType, v, path);
    }
  };
  walk(schema, value, at);
  return [...out.values()];
}

/** Every path field of a parsed spec, found through its kind's schema. */
export function specPaths(spec: AnyJobSpec): SpecPath[] {
  return markedPaths(jobKindOf(spec).schema, spec);
}

/** The real path of `p`, or of its longest existing prefix joined with the rest. */
export async function realish(p: string): Promise<string> {
  const abs = resolve(p);
  try {
    return await realpath(abs);
  } catch {
    const parent = dirname(abs);
    if (parent === abs) return abs;
    return join(await realish(parent), basename(abs));
  }
}

export function isUnder(path: string, root: string): boolean {
  const rel = relative(root, path);
  return rel === '' || (!rel.startsWith(`..${sep}`) && rel !== '..' && !isAbsolute(rel));
}

/** Path fields of `spec` outside the roots, each an issue naming its field path (nothing is read). */
export async function storageRootIssues(spec: AnyJobSpec, roots: StorageRoots): Promise<SpecIssue[]> {
  if (roots.length === 0) return [];
  const issues: SpecIssue[] = [];
  const list = roots.join(', ');
  for (const { at, path, kind } of specPaths(spec)) {
    if (!isAbsolute(path)) {
      // A parse that forgot resolveSpecPath: checked against whatever directory this process runs in.
      issues.push({ path: at, message: `${path} is not an absolute path (its kind's parse must resolve it)` });
      continue;
    }
    const real = await realish(path);
    const shown = real !== path ? `${path} (${real})` : path;
    if (kind === 'input' && !roots.some((r) => isUnder(real, r)))
      issues.push({ path: at, message: `${shown} is outside the storage roots (${list})` });
    else if (kind === 'output' && !roots.some((r) => isUnder(real, r) && real !== r))
      issues.push({ path: at, message: `${shown} is not inside a storage root (${list}; a root itself is not)` });
  }
  return issues;
}

/** `storageRootIssues`, thrown as a `JobSpecError` naming every field. */
export async function checkStorageRoots(spec: AnyJobSpec, roots: StorageRoots, source?: string): Promise<void> {
  const issues = await storageRootIssues(spec, roots);
  if (issues.length > 0) throw new JobSpecError(issues, source);
}
