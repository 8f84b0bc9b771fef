/**
 * Real nats-server processes for tests, with cleanup that fits `afterEach`:
 *
 * ```ts
 * const nats = natsScope();
 * afterEach(() => nats.cleanup());
 * it('…', async () => {
 *   const server = await nats.start({ maxPayload: 64 * 1024 });
 *   const nc = await nats.connect(server);
 * });
 * ```
 * Everything started or connected through the scope is closed/stopped by `cleanup()`, connections
 * first, in reverse order.
 */
import { connect, type ConnectionOptions, type NatsConnection } from '@nats-io/transport-node';

import {
  startNatsCluster,
  startNatsServer,
  type NatsCluster,
  type NatsClusterOptions,
  type NatsServer,
  type NatsServerOptions,
} from '../../common/nats-server-process.js';

export { startNatsCluster, startNatsServer, NatsServerStartError } from '../../common/nats-server-process.js';
export type {
  NatsCluster,
  NatsClusterOptions,
  NatsServer,
  NatsServerOptions,
} from '../../common/nats-server-process.js';
export { findNatsServer } from '../../common/nats-server-binary.js';

export interface NatsScope {
  start(options?: NatsServerOptions): Promise<NatsServer>;
  startCluster(n: number, options?: NatsClusterOptions): Promise<NatsCluster>;
  /** Connects to a server, a cluster, or URLs; the connection is closed by `cleanup()`. */
  connect(
    target: NatsServer | NatsCluster | string | readonly string[],
    options?: Partial<ConnectionOptions>,
  ): Promise<NatsConnection>;
  /** Closes connections, then stops servers. Safe to call twice. */
  cleanup(): Promise<void>;
}

export function natsScope(): NatsScope {
  let connections: NatsConnection[] = [];
  let stoppers: Array<() => Promise<void>> = [];
  return {
    async start(options = {}) {
      const s = await startNatsServer(options);
      stoppers.push(() => s.stop());
      return s;
    },
    async startCluster(n, options = {}) {
      const c = await startNatsCluster(n, options);
      stoppers.push(() => c.stop());
      return c;
    },
    async connect(target, options = {}) {
      const servers =
        typeof target === 'string'
          ? [target]
          : Array.isArray(target)
            ? [...(target as readonly string[])]
            : 'urls' in (target as NatsCluster)
              ? [...(target as NatsCluster).urls]
              : [(target as NatsServer).url];
      const nc = await connect({ servers, reconnect: false, ...options });
      connections.push(nc);
      return nc;
    },
    async cleanup() {
      const ncs = connections.reverse();
      const stops = stoppers.reverse();
      connections = [];
      stoppers = [];
      await Promise.allSettled(ncs.map((nc) => (nc.isClosed() ? Promise.resolve() : nc.close())));
      await Promise.allSettled(stops.map((stop) => stop()));
    },
  };
}

let jobCounter = 0;
/** A job name (DNS-1123 label) unique to this process and test, so subjects never collide. */
export function uniqueJobName(prefix = 'test'): string {
  return `${prefix}-${process.pid}-${Date.now().toString(36)}-${++jobCounter}`;
}
