/** The `.polytune` marker naming the job that owns a directory (common/output-marker.ts), read as untrusted. */
import { mkdirSync, mkdtempSync, readdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  isMarkerOf,
  isMarkerTemporary,
  MARKER_MAX_BYTES,
  MARKER_NAME,
  markerContent,
  markerMismatch,
  parseMarker,
  readMarker,
  writeMarker,
} from '../../common/output-marker.js';

const tmp = (): string => mkdtempSync(join(tmpdir(), 'polytune-marker-'));

describe('the output marker', () => {
  it('is JSON naming the job, and parses back to it', () => {
    expect(MARKER_NAME).toBe('.polytune');
    expect(JSON.parse(markerContent('my-job'))).toEqual({ job: 'my-job', by: 'polytune' });
    expect(parseMarker(markerContent('my-job'))).toEqual({ kind: 'job', job: 'my-job' });
    expect(() => markerContent('Not A Name')).toThrow(/not a job name/);
  });

  it('an empty or old one-sentence marker is legacy; anything else not ours is invalid, never an error', () => {
    expect(parseMarker('')).toEqual({ kind: 'legacy' });
    expect(
      parseMarker('This directory is written by polytune jobs.\nThis directory is written by polytune jobs.\n'),
    ).toEqual({ kind: 'legacy' });
    expect(parseMarker('written by polytune; a final/ without this file is never replaced\n')).toEqual({
      kind: 'legacy',
    });
    for (const text of [
      'garbage',
      '{',
      '[]',
      'null',
      '"my-job"',
      '{"job":"my-job"}',
      '{"job":"my-job","by":"someone"}',
      '{"job":"../etc","by":"polytune"}',
      '{"job":7,"by":"polytune"}',
      `{"job":"${'a'.repeat(MARKER_MAX_BYTES)}","by":"polytune"}`,
    ]) {
      expect(parseMarker(text), text).toEqual({ kind: 'invalid' });
    }
  });

  it("reads and writes a directory's marker: missing, a job, bounded, not a file", async () => {
    const dir = tmp();
    expect(await readMarker(join(dir, 'nope'))).toEqual({ kind: 'missing' });
    expect(await readMarker(dir)).toEqual({ kind: 'missing' });
    await writeMarker(dir, 'my-job');
    expect(await readMarker(dir)).toEqual({ kind: 'job', job: 'my-job' });
    await writeMarker(dir, 'next-job');
    expect(await readMarker(dir)).toEqual({ kind: 'job', job: 'next-job' });
    expect(readdirSync(dir)).toEqual([MARKER_NAME]); // the temporary file is renamed over it
    expect(isMarkerTemporary(`${MARKER_NAME}.${process.pid}.0123456789ab.tmp`)).toBe(true);
    expect(isMarkerTemporary('notes.tmp')).toBe(false);
    writeFileSync(join(dir, MARKER_NAME), markerContent('my-job') + ' '.repeat(10 * MARKER_MAX_BYTES));
    expect(await readMarker(dir)).toEqual({ kind: 'invalid' });
    const d2 = join(dir, 'd2');
    mkdirSync(join(d2, MARKER_NAME), { recursive: true });
    expect(await readMarker(d2)).toEqual({ kind: 'invalid' });
    const d3 = join(dir, 'd3');
    mkdirSync(d3);
    symlinkSync('/dev/zero', join(d3, MARKER_NAME));
    expect(await readMarker(d3)).toEqual({ kind: 'invalid' });
  });

  it('matches only its own job, and says why not', () => {
    const mine = parseMarker(markerContent('mine'));
    expect(isMarkerOf(mine, 'mine')).toBe(true);
    expect(isMarkerOf(mine, 'other')).toBe(false);
    expect(isMarkerOf({ kind: 'legacy' }, 'mine')).toBe(false);
    expect(markerMismatch(mine, 'mine', '/out')).toBeUndefined();
    expect(markerMismatch(mine, 'other', '/out')).toBe('/out belongs to job "mine" (its .polytune marker)');
    expect(markerMismatch({ kind: 'legacy' }, 'other', '/out')).toMatch(
      /write \{"job":"other","by":"polytune"\} into \/out\/.polytune/,
    );
    expect(markerMismatch({ kind: 'invalid' }, 'other', '/out')).toMatch(/marker polytune did not write/);
  });
});
