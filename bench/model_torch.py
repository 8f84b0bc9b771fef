#!/usr/bin/env python3
"""The PyTorch peer of `npm run bench:model` (bench/model.ts), issue 18: the same LLaMA shape
(vocab 32000, hidden 512, 6 layers, GQA 8/4, intermediate 1408, RMSNorm, RoPE, SiLU MLP, untied
head), the same batch (4 x 128 tokens, float32) and the same work:

  forward   the logits and the summed next-token NLL over every position, no gradient
  train     a SLAM step: that loss and its gradients w.r.t. mlp.up_proj and mlp.down_proj of
            layers 0-1 only (everything else frozen, requires_grad=False)
  matmul    [512, 512] x [512, 1408]

One thread (torch.set_num_threads(1), and OPENBLAS_NUM_THREADS=1 before torch loads OpenBLAS). Eager attention over the full
T x T square with a causal mask, as HF's eager path and polytune compute it. Prints one JSON
object: tokens/s of each, the matmul's GFLOP/s, medians of --steps timed runs after a warm-up,
with torch's version and BLAS.

Run with Debian's python3-torch; it is fast only with libopenblas0-pthread installed (with the
reference BLAS it trains at about 28 tokens/s):  /usr/bin/python3 bench/model_torch.py --json
"""
import argparse
import json
import math
import os
import re
import statistics
import sys
import time


def _threads_arg():
    for i, a in enumerate(sys.argv):
        if a == '--threads' and i + 1 < len(sys.argv):
            return sys.argv[i + 1]
        if a.startswith('--threads='):
            return a.split('=', 1)[1]
    return '1'


# Debian's torch reaches OpenBLAS through libblas.so.3 (BLAS_INFO=generic), so torch.set_num_threads
# does not reach it: the pthread OpenBLAS would run its products on every core. Its thread count
# is read when the library loads, so it is set before torch is imported.
os.environ.setdefault('OPENBLAS_NUM_THREADS', _threads_arg())
os.environ.setdefault('OMP_NUM_THREADS', _threads_arg())

import torch  # noqa: E402

VOCAB, HIDDEN, LAYERS, HEADS, KV_HEADS, INTER = 32000, 512, 6, 8, 4, 1408
BATCH, SEQ, SLAM_LAYERS, EPS, THETA = 4, 128, (0, 1), 1e-5, 10000.0
HEAD_DIM = HIDDEN // HEADS


def params(gen):
    def w(*shape):
        return torch.randn(*shape, generator=gen) * 0.02

    p = {'embed': w(VOCAB, HIDDEN), 'norm': torch.ones(HIDDEN), 'head': w(VOCAB, HIDDEN)}
    for l in range(LAYERS):
        p.update({
            f'{l}.ln1': torch.ones(HIDDEN), f'{l}.ln2': torch.ones(HIDDEN),
            f'{l}.q': w(HEADS * HEAD_DIM, HIDDEN), f'{l}.k': w(KV_HEADS * HEAD_DIM, HIDDEN),
            f'{l}.v': w(KV_HEADS * HEAD_DIM, HIDDEN), f'{l}.o': w(HIDDEN, HEADS * HEAD_DIM),
            f'{l}.gate': w(INTER, HIDDEN), f'{l}.up': w(INTER, HIDDEN), f'{l}.down': w(HIDDEN, INTER),
        })
    return p


def rms_norm(x, w):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * w


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def nll_sum(p, ids, cos, sin, mask):
    B, T = ids.shape
    h = p['embed'][ids]
    for l in range(LAYERS):
        x = rms_norm(h, p[f'{l}.ln1'])
        q = (x @ p[f'{l}.q'].t()).view(B, T, HEADS, HEAD_DIM).transpose(1, 2)
        k = (x @ p[f'{l}.k'].t()).view(B, T, KV_HEADS, HEAD_DIM).transpose(1, 2)
        v = (x @ p[f'{l}.v'].t()).view(B, T, KV_HEADS, HEAD_DIM).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k = k.repeat_interleave(HEADS // KV_HEADS, dim=1)
        v = v.repeat_interleave(HEADS // KV_HEADS, dim=1)
        s = (q @ k.transpose(-1, -2)) / math.sqrt(HEAD_DIM) + mask
        a = torch.softmax(s, dim=-1) @ v
        h = h + a.transpose(1, 2).reshape(B, T, HIDDEN) @ p[f'{l}.o'].t()
        x = rms_norm(h, p[f'{l}.ln2'])
        m = torch.nn.functional.silu(x @ p[f'{l}.gate'].t()) * (x @ p[f'{l}.up'].t())
        h = h + m @ p[f'{l}.down'].t()
    logits = rms_norm(h, p['norm']) @ p['head'].t()
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1), reduction='sum')


def blas_library():
    """The BLAS shared object this process mapped (Debian's torch uses libblas.so.3, an alternative)."""
    try:
        with open('/proc/self/maps') as f:
            libs = {l.split()[-1] for l in f if 'blas' in l.lower() and l.split()[-1].startswith('/')}
        return ', '.join(sorted(os.path.realpath(x) for x in libs))
    except OSError:
        return ''


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--steps', type=int, default=3)
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--json', action='store_true')
    ap.add_argument('--serve', action='store_true',
                    help='print the setup as JSON, then time one forward, train step and matmul for each line '
                         '"round" read from stdin (bench/model.ts interleaves these rounds with its own)')
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(1)
    p = params(gen)
    trainable = [f'{l}.{m}' for l in SLAM_LAYERS for m in ('up', 'down')]
    for n in trainable:
        p[n].requires_grad_(True)
    ids = torch.randint(3, VOCAB, (BATCH, SEQ), generator=gen)
    inv = 1.0 / THETA ** (torch.arange(0, HEAD_DIM, 2).float() / HEAD_DIM)
    ang = torch.outer(torch.arange(SEQ).float(), inv)
    emb = torch.cat((ang, ang), dim=-1)
    cos, sin = emb.cos(), emb.sin()
    mask = torch.full((SEQ, SEQ), float('-inf')).triu(1)

    def forward():
        with torch.no_grad():
            nll_sum(p, ids, cos, sin, mask).item()

    def train():
        loss = nll_sum(p, ids, cos, sin, mask)
        grads = torch.autograd.grad(loss, [p[n] for n in trainable])
        loss.item()
        del grads

    a = torch.randn(BATCH * SEQ, HIDDEN, generator=gen)
    b = torch.randn(HIDDEN, INTER, generator=gen)

    def timed(f, n):
        f()
        ts = []
        for _ in range(n):
            s = time.perf_counter()
            f()
            ts.append(time.perf_counter() - s)
        return statistics.median(ts)

    found = re.search(r'BLAS_INFO=(\w+)', torch.__config__.show())
    blas = found.group(1) if found else ''
    info = {'torch': torch.__version__, 'blas': blas, 'blasLibrary': blas_library(), 'threads': torch.get_num_threads()}
    if args.serve:
        print(json.dumps(info), flush=True)
        for line in sys.stdin:
            if line.strip() != 'round':
                continue
            t = {'cpu': {}}
            for name, f in (('forward', forward), ('train', train), ('matmul', lambda: (a @ b).sum().item())):
                c = time.process_time()
                s = time.perf_counter()
                f()
                t[name] = time.perf_counter() - s
                t['cpu'][name] = time.process_time() - c
            print(json.dumps(t), flush=True)
        return

    fwd = timed(forward, args.steps)
    step = timed(train, args.steps)
    mm = timed(lambda: (a @ b).sum().item(), max(5, args.steps))
    n = BATCH * SEQ
    out = {
        **info,
        'forwardTokensPerSecond': round(n / fwd, 3), 'trainTokensPerSecond': round(n / step, 3),
        'trainStepSeconds': round(step, 3), 'matmulGflops': round(2 * n * HIDDEN * INTER / mm / 1e9, 3),
    }
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f'{k:24} {v}')


if __name__ == '__main__':
    main()
