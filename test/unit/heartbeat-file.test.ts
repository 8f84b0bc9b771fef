/** The heartbeat file the chart's liveness probe reads (worker/heartbeat-file.ts). */
import { mkdtempSync, readFileSync, rmSync, statSync, utimesSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../../common/logging.js';
import { startHeartbeatFile } from '../../worker/heartbeat-file.js';

const dir = mkdtempSync(join(tmpdir(), 'polytune-heartbeat-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('heartbeat file', () => {
  it('is written at once under the local rank, touched again every interval, and no more after stop()', async () => {
    const hb = startHeartbeatFile(join(dir, 'nested'), 3, silentLogger, 50);
    expect(hb.file).toBe(join(dir, 'nested', 'worker-3.heartbeat'));
    expect(Date.parse(readFileSync(hb.file, 'utf8').trim())).toBeGreaterThan(Date.now() - 5_000);
    const old = Date.now() / 1000 - 3600;
    utimesSync(hb.file, old, old);
    await new Promise((r) => setTimeout(r, 150));
    expect(statSync(hb.file).mtimeMs).toBeGreaterThan(Date.now() - 5_000);
    hb.stop();
    utimesSync(hb.file, old, old);
    await new Promise((r) => setTimeout(r, 150));
    expect(statSync(hb.file).mtimeMs / 1000).toBeCloseTo(old, 0);
  });
});
