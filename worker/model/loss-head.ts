/**
 * The loss head: which positions are supervised (HF's shift, -100 ignored) and the per-token NLL
 * of the output head as one custom-gradient op that never materialises a one-hot tensor nor the
 * whole [tokens, vocab] logits.
 */
import * as tf from '@tensorflow/tfjs-core';
import { UserError } from '../../common/errors.js';
import { IGNORE_INDEX } from '../../common/records.js';
import { matMulTransposeB, transposeLast } from './matmul.js';
import { concatOrOnly, customOp } from './ops.js';

/**
 * Logits of the loss head computed at once (rows x vocab floats): 16 MiB of them, 131 rows of a
 * 32000-token vocabulary. Smaller chunks cost no speed (the product's rows are independent); the
 * whole [tokens, vocab] would be 65 MB for 512 tokens of 32000, 266 MB of Llama-3's 128256.
 */
export const HEAD_CHUNK_ELEMS = 4 * 1024 * 1024;

/** The output head's weight as the model stores it. */
export interface HeadWeight {
  /** A trainable variable in the HF layout [V, H] (`trains`), else frozen and stored [H, V]. */
  readonly stored: tf.Tensor2D;
  readonly trains: boolean;
  readonly vocabSize: number;
}

/**
 * The supervised positions under HF's shift: hidden state at (b, t) predicts labels[b, t+1].
 * Returns flat indices b*T+t, their targets and rows.
 */
export function supervisedPositions(
  labels: tf.Tensor2D,
  vocabSize: number,
): { index: Int32Array; target: Int32Array; row: Int32Array } {
  const [B, T] = labels.shape;
  const lab = labels.dataSync();
  const V = vocabSize;
  const index: number[] = [];
  const target: number[] = [];
  const row: number[] = [];
  for (let b = 0; b < B; b++) {
    for (let t = 0; t + 1 < T; t++) {
      const y = lab[b * T + t + 1]!;
      if (y === IGNORE_INDEX) continue;
      if (!Number.isInteger(y) || y < 0 || y >= V)
        throw new UserError(`label ${y} at [${b}, ${t + 1}] is outside the vocabulary [0, ${V})`);
      index.push(b * T + t);
      target.push(y);
      row.push(b);
    }
  }
  return { index: Int32Array.from(index), target: Int32Array.from(target), row: Int32Array.from(row) };
}

/**
 * Per-token NLL -log softmax(h W^T)[target] for hidden states `hs` [M, H], as one
 * custom-gradient op: logsumexp - logit[target], with d/dh = (softmax - onehot) W applied
 * without building a one-hot tensor. Logits exist one chunk of rows at a time (`chunkElems`
 * floats), never whole. Under a gradient tape, each chunk's softmax goes through the head weight
 * at once (p W, what dh needs), so that the backward pass needs no logits. A head weight that
 * trains (full tuning, or tied to trainable embeddings) needs its own gradient too,
 * sum_m dy_m (p_m - onehot_m)^T h_m, which depends on dy: for it the backward pass recomputes
 * the chunks' logits.
 */
export function tokenNll(hs: tf.Tensor2D, targets: tf.Tensor1D, head: HeadWeight, chunkElems: number): tf.Tensor1D {
  const { stored, trains: wTrains } = head;
  const [M] = hs.shape;
  const chunk = Math.max(1, Math.floor(chunkElems / head.vocabSize));
  const parts: Array<{ start: number; size: number }> = [];
  for (let s = 0; s < M; s += chunk) parts.push({ start: s, size: Math.min(chunk, M - s) });
  // h W^T: logits [rows, V]; p W: [rows, V] -> [rows, H]. Whichever layout W is stored in, the
  // vocabulary-sized operand is never transposed.
  const logitsOf = (h: tf.Tensor2D): tf.Tensor2D => (wTrains ? matMulTransposeB(h, stored) : tf.matMul(h, stored));
  const throughHead = (p: tf.Tensor2D): tf.Tensor2D => (wTrains ? tf.matMul(p, stored) : matMulTransposeB(p, stored));
  const rowsOf = (t: tf.Tensor2D, start: number, size: number): tf.Tensor2D => tf.slice(t, [start, 0], [size, -1]);

  // Inputs: hs, targets, and the head weight only when it trains (a frozen one gets no gradient).
  const inputs: tf.Tensor[] = wTrains ? [hs, targets, stored] : [hs, targets];
  return customOp(inputs, ([h, tg], save) => {
    const fuse = tf.engine().state.gradientDepth > 0 && !wTrains;
    const lses: tf.Tensor[] = [];
    const pws: tf.Tensor[] = [];
    for (const { start, size } of parts) {
      const out = tf.tidy(() => {
        // logsumexp = m + log(sum(exp(logits - m)))
        const logits = logitsOf(rowsOf(h as tf.Tensor2D, start, size));
        const m = tf.max(logits, 1, true);
        const e = tf.exp(tf.sub(logits, m));
        const total = tf.sum(e, 1, true);
        const lse = tf.reshape(tf.add(m, tf.log(total)), [size]);
        return fuse ? [lse, throughHead(tf.div(e, total))] : [lse];
      });
      lses.push(out[0]!);
      if (fuse) pws.push(out[1]!);
    }
    const lse = concatOrOnly(lses) as tf.Tensor1D;
    // The target logit as a row dot product <h_m, W[target_m]>: the number the matMul gives.
    const wRows = wTrains ? tf.gather(stored, tg!) : tf.transpose(tf.gather(stored, tg!, 1));
    const labelLogit = tf.sum(tf.mul(h!, wRows), 1);
    save(fuse ? [h!, tg!, lse, wRows, concatOrOnly(pws)] : [h!, tg!, lse, wRows]);
    return {
      value: tf.sub(lse, labelLogit),
      gradFunc: (dy, saved) => {
        const [sh, stg, slse, sRows, spw] = saved as [tf.Tensor2D, tf.Tensor1D, tf.Tensor1D, tf.Tensor2D, tf.Tensor2D?];
        const dyCol = tf.expandDims(dy, 1);
        let pw = spw ? tf.mul(spw, dyCol) : undefined; // sum_v dy p_v W_v
        let dW: tf.Tensor | undefined;
        if (!pw) {
          const pwChunks: tf.Tensor[] = [];
          for (const { start, size } of parts) {
            const prev = dW;
            const out = tf.tidy(() => {
              const hc = rowsOf(sh, start, size);
              // dy * softmax(logits), recomputed with the forward pass's lse.
              const logits = tf.sub(logitsOf(hc), tf.expandDims(tf.slice(slse, [start], [size]), 1));
              const p = tf.mul<tf.Tensor2D>(tf.exp(logits), rowsOf(dyCol as tf.Tensor2D, start, size));
              if (!wTrains) return [throughHead(p)];
              const g = tf.matMul(transposeLast(p), hc); // [V, H]: the transpose is chunk-sized
              return [throughHead(p), prev ? tf.add(prev, g) : g];
            });
            pwChunks.push(out[0]!);
            if (wTrains) {
              prev?.dispose();
              dW = out[1];
            }
          }
          pw = concatOrOnly(pwChunks);
        }
        // minus dy * onehot(target), pushed through the product: dh -= dy * W[target].
        const grads: tf.Tensor[] = [tf.sub(pw, tf.mul(sRows, dyCol)), tf.zerosLike(stg)];
        if (wTrains) grads.push(tf.sub(dW!, tf.scatterND(tf.expandDims(stg, 1), tf.mul(sh, dyCol), stored.shape)));
        return grads;
      },
    };
  }) as tf.Tensor1D;
}
