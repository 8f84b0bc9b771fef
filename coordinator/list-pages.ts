/**
 * Paging of `List`: jobs newest first (createdAt descending, then id), a page at a time. The page
 * token is the position after the page's last job (its createdAt and id, base64url JSON), so a
 * job created or deleted between two pages neither shifts nor repeats the others.
 */
import { isJobName } from '../common/subjects.js';
import { RequestValidationError } from './errors.js';
import type { JobRecord } from './job-record.js';

/** @default 100 jobs a page. */
export const DEFAULT_LIST_PAGE_SIZE = 100;
export const MAX_LIST_PAGE_SIZE = 1000;

interface Position {
  readonly createdAt: number;
  readonly id: string;
}

export function encodePageToken(job: Position): string {
  return Buffer.from(JSON.stringify([job.createdAt, job.id]), 'utf8').toString('base64url');
}

export function decodePageToken(token: string): Position {
  const bad = (): never => {
    throw new RequestValidationError('page_token', 'is not a next_page_token of List');
  };
  if (token.length > 200 || !/^[A-Za-z0-9_-]+$/.test(token)) bad();
  let v: unknown;
  try {
    v = JSON.parse(Buffer.from(token, 'base64url').toString('utf8'));
  } catch {
    bad();
  }
  const ok =
    Array.isArray(v) && v.length === 2 && Number.isSafeInteger(v[0]) && typeof v[1] === 'string' && isJobName(v[1]);
  if (!ok) bad();
  const [createdAt, id] = v as [number, string];
  return { createdAt, id };
}

export function checkPageSize(v: unknown): number {
  if (v === undefined || v === null || v === 0) return DEFAULT_LIST_PAGE_SIZE;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 1 || v > MAX_LIST_PAGE_SIZE) {
    const range = `1..${MAX_LIST_PAGE_SIZE} (0 for ${DEFAULT_LIST_PAGE_SIZE})`;
    throw new RequestValidationError('page_size', `must be ${range}, got ${String(v)}`);
  }
  return v;
}

/** Newest first: createdAt descending, then id ascending. */
export function compareJobs(a: Position, b: Position): number {
  return b.createdAt - a.createdAt || a.id.localeCompare(b.id);
}

/** One page of `jobs` (any order) after `token`, and the token of the next page ('' on the last). */
export function listPage(
  jobs: readonly JobRecord[],
  pageSize: number,
  token: string,
): { page: JobRecord[]; next: string } {
  const sorted = [...jobs].sort(compareJobs);
  const after = token ? decodePageToken(token) : undefined;
  const start = after ? sorted.findIndex((j) => compareJobs(after, j) < 0) : 0;
  const from = start < 0 ? sorted.length : start;
  const page = sorted.slice(from, from + pageSize);
  const last = page.at(-1);
  return { page, next: last && from + pageSize < sorted.length ? encodePageToken(last) : '' };
}
