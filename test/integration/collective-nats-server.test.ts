import { existsSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';

import { findNatsServer, natsScope, startNatsServer } from '../helpers/nats-server.js';

const scope = natsScope();
afterEach(() => scope.cleanup());

describe('nats-server launcher', () => {
  it('finds the binary', () => {
    expect(existsSync(findNatsServer())).toBe(true);
  });

  it('starts a server on free ports with JetStream, max_payload and monitoring; stop() cleans up', async () => {
    const server = await startNatsServer({ jetstream: true, maxPayload: 64 * 1024 });
    try {
      expect(server.url).toMatch(/^nats:\/\/127\.0\.0\.1:\d+$/);
      expect(server.port).toBeGreaterThan(0);
      expect(server.monitorUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
      const nc = await scope.connect(server);
      expect(nc.info?.max_payload).toBe(64 * 1024);
      expect(nc.info?.jetstream).toBe(true);
      const varz = await server.monitor('varz');
      expect(varz['max_payload']).toBe(64 * 1024);
      expect(typeof varz['slow_consumers']).toBe('number');
      expect(server.storeDir).toBeDefined();
      expect(existsSync(server.storeDir!)).toBe(true);
      await nc.close();
    } finally {
      await server.stop();
    }
    expect(server.running).toBe(false);
    expect(existsSync(server.storeDir!)).toBe(false);
    await server.stop(); // idempotent
  });

  it('keeps a caller-given store dir, and reports a crash', async () => {
    const { mkdtempSync, rmSync } = await import('node:fs');
    const { tmpdir } = await import('node:os');
    const { join } = await import('node:path');
    const dir = mkdtempSync(join(tmpdir(), 'polytune-test-js-'));
    try {
      const server = await scope.start({ jetstream: true, storeDir: dir });
      server.kill('SIGKILL');
      const exit = await server.exited;
      expect(exit.signal).toBe('SIGKILL');
      await server.stop();
      expect(existsSync(dir)).toBe(true);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('fails clearly when the server cannot start', async () => {
    await expect(startNatsServer({ config: ['this is { not valid'] })).rejects.toThrow(
      /exited during start-up[\s\S]*nats-server log/,
    );
  });

  it('starts a routed cluster; messages cross routes', async () => {
    const cluster = await scope.startCluster(3);
    expect(cluster.servers).toHaveLength(3);
    const a = await scope.connect(cluster.servers[0]!.url);
    const c = await scope.connect(cluster.servers[2]!.url);
    const sub = c.subscribe('polytune.x.0.ctl.hello', { max: 1 });
    await c.flush();
    // interest propagates over routes asynchronously: publish until it arrives
    const got = (async () => {
      for await (const m of sub) return m.string();
      return undefined;
    })();
    let received: string | undefined;
    const timer = setInterval(() => a.publish('polytune.x.0.ctl.hello', 'hi'), 20);
    try {
      received = await got;
    } finally {
      clearInterval(timer);
    }
    expect(received).toBe('hi');
    const routez = await cluster.servers[1]!.monitor('routez');
    expect(routez['num_routes']).toBeGreaterThanOrEqual(2);
  });
});
