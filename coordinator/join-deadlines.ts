/**
 * Deadlines on a `WorkerService.Join` stream, so that a peer cannot hold one open doing nothing:
 *
 * - Hello: the first message must arrive within `helloTimeoutMs` of the call (10 s by default; a
 *   real worker sends it at once). A stream that sends nothing, or the start of a message and then
 *   stalls (grpc-js hands over whole messages only, so a half-sent Hello is no Hello), is ended
 *   with DEADLINE_EXCEEDED.
 * - After Hello, a worker sends a heartbeat every 2 s; a stream stalled mid-message is silent, so
 *   the registry's heartbeat timeout (worker-registry.ts) ends it.
 *
 * Ending a gRPC call sends the status (trailers), which half-closes the HTTP/2 stream; a peer that
 * never ends its side would keep the stream and its slot of `grpc.max_concurrent_streams` open.
 * `resetHttp2Stream` then resets it (RST_STREAM). grpc-js has no public way to reach the HTTP/2
 * stream of a server call: this walks its private fields (`call.call[.nextCall…].stream`), pinned
 * to @grpc/grpc-js 1.14 and tested (test/integration/join-deadlines.test.ts) with a raw HTTP/2
 * client that sees the reset. Where the fields are not found it does nothing: the trailers still
 * went out, and a well-behaved client closes its side on them.
 */
import { constants as http2Constants, type ServerHttp2Stream } from 'node:http2';

/** @default 10 s for the first message (Hello) of a Join stream. */
export const DEFAULT_HELLO_TIMEOUT_MS = 10_000;
/** @default 1 s between sending the status of an ended Join and resetting the HTTP/2 stream. */
export const DEFAULT_STREAM_RESET_GRACE_MS = 1_000;

function isHttp2Stream(v: unknown): v is ServerHttp2Stream {
  const s = v as Partial<ServerHttp2Stream> | null | undefined;
  return typeof s?.close === 'function' && typeof s.respond === 'function' && 'rstCode' in (s as object);
}

/** The HTTP/2 stream under a grpc-js server call, if its private fields are where 1.14 has them. */
export function http2StreamOf(call: unknown): ServerHttp2Stream | undefined {
  let node = (call as { call?: unknown } | null)?.call;
  for (let depth = 0; depth < 8 && node && typeof node === 'object'; depth++) {
    const stream = (node as { stream?: unknown }).stream;
    if (isHttp2Stream(stream)) return stream;
    node = (node as { nextCall?: unknown }).nextCall;
  }
  return undefined;
}

/**
 * Resets the call's HTTP/2 stream after `graceMs` (time for the status to be flushed) unless it
 * closed by then. The timer does not keep the process alive.
 */
export function resetHttp2Stream(call: unknown, graceMs = DEFAULT_STREAM_RESET_GRACE_MS): void {
  const stream = http2StreamOf(call);
  if (!stream || stream.closed || stream.destroyed) return;
  const t = setTimeout(() => {
    if (!stream.closed && !stream.destroyed) stream.close(http2Constants.NGHTTP2_CANCEL);
  }, graceMs);
  t.unref();
}
