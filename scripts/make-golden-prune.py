#!/usr/bin/env python3
"""Golden Wanda masks for worker/prune/ (PruneJob), from an independent PyTorch reference.

The model is test/golden/llama-gqa (made by make-golden.py: F32, 2 layers, hidden 32, 4 heads over
2 kv heads, intermediate 64). This script writes test/golden/prune/:

- calibration.jsonl: 5 tokenized samples (`input_ids`, `labels`) of lengths 7..15, ids from a fixed
  generator (torch.manual_seed(14));
- expected.json: for sparsity 0.3, sparsity 0.5 and pattern 2:4, every projection's mask, row-major
  [out, in], packed 8 positions a byte (bit 7 first) as hex.

The reference is locuslab/wanda `prune_wanda` restated in float64: layer by layer, each sample run
alone through decoder layer i (the HF LLaMA layer, re-implemented here), the per-column statistic
scaler[j] = sum over every sample's tokens of x_j^2 / samples (WrappedGPT.add_batch's running
mean), score = |W| * sqrt(scaler); unstructured: `torch.sort(score, dim=-1, stable=True)` and the
first int(cols * sparsity) of each row pruned; N:M: in every group of M columns the N lowest,
ties to the lower column (a stable argsort; torch.topk leaves the order of ties unspecified).
Then layer i is run again with its pruned weights for the inputs of layer i+1.

Run with Debian's python3 (python3-torch): /usr/bin/python3 scripts/make-golden-prune.py
"""
import importlib.util
import json
import os
import struct

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location('make_golden', os.path.join(HERE, 'make-golden.py'))
mg = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mg)

MODEL = os.path.join(HERE, '..', 'test', 'golden', 'llama-gqa')
OUT = os.path.join(HERE, '..', 'test', 'golden', 'prune')
MODULES = ['self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj', 'self_attn.o_proj',
           'mlp.gate_proj', 'mlp.up_proj', 'mlp.down_proj']


def read_safetensors(path):
    with open(path, 'rb') as f:
        n = struct.unpack('<Q', f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == '__metadata__':
            continue
        assert info['dtype'] == 'F32'
        a, b = info['data_offsets']
        out[name] = torch.frombuffer(bytearray(data[a:b]), dtype=torch.float32).reshape(info['shape']).clone()
    return out


def layer(cfg, P, i, x, hook):
    """HF LlamaDecoderLayer on x [T, H] (batch of one), float64; hook(name, input) sees each projection's input."""
    T = x.shape[0]
    H, nH = cfg['hidden_size'], cfg['num_attention_heads']
    nKV = cfg.get('num_key_value_heads', nH)
    D = cfg.get('head_dim') or H // nH
    eps = cfg['rms_norm_eps']
    p = lambda s: P[f'model.layers.{i}.{s}']

    def lin(name, inp):
        hook(name, inp)
        return inp @ p(f'{name}.weight').T

    pos = torch.arange(T, dtype=torch.float64)[None, :]
    freqs = (mg.inv_freq(cfg, T)[None, :, None] @ pos[:, None, :]).transpose(1, 2)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos()[:, None], emb.sin()[:, None]
    mask = torch.full((T, T), torch.finfo(torch.float64).min, dtype=torch.float64).triu(1)
    h = mg.rms_norm(x, p('input_layernorm.weight'), eps)
    q = lin('self_attn.q_proj', h).view(1, T, nH, D).transpose(1, 2)
    k = lin('self_attn.k_proj', h).view(1, T, nKV, D).transpose(1, 2)
    v = lin('self_attn.v_proj', h).view(1, T, nKV, D).transpose(1, 2)
    q = q * cos + mg.rotate_half(q) * sin
    k = k * cos + mg.rotate_half(k) * sin
    k, v = mg.repeat_kv(k, nH // nKV), mg.repeat_kv(v, nH // nKV)
    w = torch.softmax(torch.matmul(q, k.transpose(2, 3)) * D ** -0.5 + mask, dim=-1)
    o = torch.matmul(w, v).transpose(1, 2).reshape(T, nH * D)
    x = x + lin('self_attn.o_proj', o)
    h = mg.rms_norm(x, p('post_attention_layernorm.weight'), eps)
    gate = lin('mlp.gate_proj', h)
    up = lin('mlp.up_proj', h)
    return x + lin('mlp.down_proj', torch.nn.functional.silu(gate) * up)


def prune(cfg, weights, samples, sparsity=None, nm=None):
    P = {k: v.double() for k, v in weights.items()}
    inps = [P['model.embed_tokens.weight'][torch.tensor(s)] for s in samples]
    masks = {}
    for i in range(cfg['num_hidden_layers']):
        sums = {m: 0 for m in MODULES}
        for x in inps:
            def hook(name, inp):
                sums[name] = sums[name] + (inp ** 2).sum(0)
            layer(cfg, P, i, x, hook)
        for m in MODULES:
            name = f'model.layers.{i}.{m}.weight'
            W = P[name]
            score = W.abs() * torch.sqrt(sums[m] / len(samples)).reshape(1, -1)
            M = torch.zeros_like(score, dtype=torch.bool)
            if nm is None:
                idx = torch.sort(score, dim=-1, stable=True)[1][:, :int(score.shape[1] * sparsity)]
                M.scatter_(1, idx, True)
            else:
                n, m_ = nm
                for g in range(0, score.shape[1], m_):
                    idx = torch.sort(score[:, g:g + m_], dim=-1, stable=True)[1][:, :n]
                    M.scatter_(1, g + idx, True)
            W[M] = 0
            masks[name] = M
        inps = [layer(cfg, P, i, x, lambda *_: None) for x in inps]
    return masks


def pack(mask):
    bits = mask.reshape(-1).tolist()
    bits += [False] * ((8 - len(bits) % 8) % 8)
    return bytes(sum(1 << (7 - k) for k in range(8) if bits[j + k]) for j in range(0, len(bits), 8)).hex()


def main():
    cfg = json.load(open(os.path.join(MODEL, 'config.json')))
    weights = read_safetensors(os.path.join(MODEL, 'model.safetensors'))
    torch.manual_seed(14)
    samples = [torch.randint(3, cfg['vocab_size'], (n,)).tolist() for n in (9, 7, 15, 11, 12)]
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, 'calibration.jsonl'), 'w') as f:
        for s in samples:
            f.write(json.dumps({'input_ids': s, 'labels': s}) + '\n')
    expected = {}
    for key, kw in (('sparsity-0.3', {'sparsity': 0.3}), ('sparsity-0.5', {'sparsity': 0.5}), ('2:4', {'nm': (2, 4)})):
        masks = prune(cfg, weights, samples, **kw)
        expected[key] = {name: {'shape': list(m.shape), 'mask': pack(m)} for name, m in masks.items()}
    with open(os.path.join(OUT, 'expected.json'), 'w') as f:
        json.dump(expected, f, indent=1, sort_keys=True)
        f.write('\n')


if __name__ == '__main__':
    main()
