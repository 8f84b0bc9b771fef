#!/usr/bin/env python3
"""Golden outputs for worker/model/t5-encoder.ts (LinguaLIFT's multilingual encoder), from an
independent PyTorch reference.

transformers is not needed: `encode` below re-implements HF `modeling_t5.py`'s encoder
(T5EncoderModel) as T5 v1.1 / mT5 compute it: T5LayerNorm (RMS, no mean subtraction, no bias),
T5Attention without the 1/sqrt(d) scaling, the bidirectional `_relative_position_bucket` (in
float32 as torch does it, then an integer bucket) and `compute_bias` from block 0's table shared by
every block, the additive padding mask on the keys, T5DenseGatedActDense with `gelu_new` (the tanh
approximation), and `final_layer_norm`. Computed in float64 from the stored (possibly bf16) weights.

Each encoder goes to test/golden/<name>/ in the HF layout (config.json; model.safetensors, or two
shards with model.safetensors.index.json) with `golden.json` (input ids [B,T], the keep mask,
buckets of a long range for the bucket function alone) and `expected.safetensors` (F32:
`last_hidden_state` [B,T,d_model]).

Run with Debian's python3 (python3-torch): /usr/bin/python3 scripts/make-golden-t5.py
"""
import importlib.util
import json
import math
import os

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location('make_golden', os.path.join(HERE, 'make-golden.py'))
mg = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mg)  # the safetensors writers (its main() only runs as a script)
OUT = mg.OUT


def relative_position_bucket(relative_position, num_buckets, max_distance):
    """HF T5Attention._relative_position_bucket, bidirectional=True, verbatim in torch ops."""
    relative_buckets = 0
    num_buckets //= 2
    relative_buckets += (relative_position > 0).to(torch.long) * num_buckets
    relative_position = torch.abs(relative_position)
    max_exact = num_buckets // 2
    is_small = relative_position < max_exact
    relative_position_if_large = max_exact + (
        torch.log(relative_position.float() / max_exact)
        / math.log(max_distance / max_exact)
        * (num_buckets - max_exact)
    ).to(torch.long)
    relative_position_if_large = torch.min(
        relative_position_if_large, torch.full_like(relative_position_if_large, num_buckets - 1))
    relative_buckets += torch.where(is_small, relative_position, relative_position_if_large)
    return relative_buckets


def layer_norm(x, w, eps):
    var = x.pow(2).mean(-1, keepdim=True)
    return w * (x * torch.rsqrt(var + eps))


def gelu_new(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def encode(cfg, P, ids, keep, emb):
    B, T = ids.shape
    H, D = cfg['num_heads'], cfg['d_kv']
    x = P[emb][ids]
    ctx = torch.arange(T)[:, None]
    mem = torch.arange(T)[None, :]
    buckets = relative_position_bucket(mem - ctx, cfg['relative_attention_num_buckets'],
                                       cfg['relative_attention_max_distance'])
    bias = P['encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight'][buckets]  # [T,T,H]
    bias = bias.permute(2, 0, 1)[None]  # [1,H,T,T]
    mask = (1.0 - keep.double())[:, None, None, :] * torch.finfo(torch.float64).min
    bias = bias + mask
    for i in range(cfg['num_layers']):
        p = lambda s: P[f'encoder.block.{i}.{s}']
        h = layer_norm(x, p('layer.0.layer_norm.weight'), cfg['layer_norm_epsilon'])
        shape = lambda t: t.view(B, T, H, D).transpose(1, 2)
        q = shape(h @ p('layer.0.SelfAttention.q.weight').T)
        k = shape(h @ p('layer.0.SelfAttention.k.weight').T)
        v = shape(h @ p('layer.0.SelfAttention.v.weight').T)
        scores = q @ k.transpose(3, 2) + bias
        w = torch.softmax(scores, dim=-1)
        a = (w @ v).transpose(1, 2).reshape(B, T, H * D)
        x = x + a @ p('layer.0.SelfAttention.o.weight').T
        h = layer_norm(x, p('layer.1.layer_norm.weight'), cfg['layer_norm_epsilon'])
        g = gelu_new(h @ p('layer.1.DenseReluDense.wi_0.weight').T) * (h @ p('layer.1.DenseReluDense.wi_1.weight').T)
        x = x + g @ p('layer.1.DenseReluDense.wo.weight').T
    return layer_norm(x, P['encoder.final_layer_norm.weight'], cfg['layer_norm_epsilon'])


def shapes(cfg, emb):
    d, inner, ff = cfg['d_model'], cfg['num_heads'] * cfg['d_kv'], cfg['d_ff']
    out = {emb: [cfg['vocab_size'], d]}
    for i in range(cfg['num_layers']):
        b = f'encoder.block.{i}.'
        out[b + 'layer.0.layer_norm.weight'] = [d]
        for n in 'qkv':
            out[b + f'layer.0.SelfAttention.{n}.weight'] = [inner, d]
        out[b + 'layer.0.SelfAttention.o.weight'] = [d, inner]
        if i == 0:
            out[b + 'layer.0.SelfAttention.relative_attention_bias.weight'] = [
                cfg['relative_attention_num_buckets'], cfg['num_heads']]
        out[b + 'layer.1.layer_norm.weight'] = [d]
        out[b + 'layer.1.DenseReluDense.wi_0.weight'] = [ff, d]
        out[b + 'layer.1.DenseReluDense.wi_1.weight'] = [ff, d]
        out[b + 'layer.1.DenseReluDense.wo.weight'] = [d, ff]
    out['encoder.final_layer_norm.weight'] = [d]
    return out


BASE = {
    'd_ff': 24, 'd_kv': 6, 'd_model': 16, 'num_heads': 3, 'num_layers': 2, 'vocab_size': 64,
    'relative_attention_num_buckets': 8, 'relative_attention_max_distance': 12,
    'dropout_rate': 0.0, 'layer_norm_epsilon': 1e-6, 'feed_forward_proj': 'gated-gelu',
    'dense_act_fn': 'gelu_new', 'is_gated_act': True, 'pad_token_id': 0, 'eos_token_id': 1,
    'tie_word_embeddings': False, 'transformers_version': '4.44.0',
}

ENCODERS = {
    # F32, one file, `shared.weight` (what save_pretrained keeps of the tied pair), T5 v1.1 names.
    't5-encoder': dict(BASE, architectures=['T5EncoderModel'], model_type='t5', torch_dtype='float32'),
    # BF16, two shards and an index, mT5, the embedding stored as `encoder.embed_tokens.weight`,
    # 32 buckets up to 128 (mT5's own) and one more layer.
    'mt5-encoder-bf16-sharded': dict(BASE, architectures=['MT5EncoderModel'], model_type='mt5',
                                     torch_dtype='bfloat16', num_layers=3, relative_attention_num_buckets=32,
                                     relative_attention_max_distance=128),
}


def main():
    for name, cfg in ENCODERS.items():
        d = os.path.join(OUT, name)
        os.makedirs(d, exist_ok=True)
        gen = torch.Generator().manual_seed(1234 + len(name))
        sharded = name.endswith('sharded')
        emb = 'encoder.embed_tokens.weight' if sharded else 'shared.weight'
        P = {}
        for n, shape in shapes(cfg, emb).items():
            if n.endswith('layer_norm.weight'):
                P[n] = 1.0 + 0.1 * torch.randn(shape, generator=gen)
            else:
                P[n] = torch.randn(shape, generator=gen) * (0.5 if n == emb else shape[-1] ** -0.5)
        dtype = {'float32': 'F32', 'bfloat16': 'BF16'}[cfg['torch_dtype']]
        with open(os.path.join(d, 'config.json'), 'w') as fh:
            json.dump(cfg, fh, indent=2, sort_keys=True)
            fh.write('\n')
        if sharded:
            first = {n for n in P if n.startswith('encoder.block.0.') or n == emb}
            mg.write_sharded(d, P, dtype, first)
        else:
            mg.write_safetensors(os.path.join(d, 'model.safetensors'), P, dtype=dtype, metadata={'format': 'pt'})
        # The reference reads the weights as stored (bf16 rounding included), in float64.
        stored = {n: t.to(mg.DTYPES[dtype]).double() for n, t in P.items()}
        B, T = 3, 20
        ids = torch.randint(2, cfg['vocab_size'], (B, T), generator=gen)
        keep = torch.ones(B, T, dtype=torch.long)
        keep[1, 13:] = 0          # right padding
        keep[2, :9] = 0           # left padding
        ids[keep == 0] = cfg['pad_token_id']
        out = encode(cfg, stored, ids, keep, emb)
        rel = torch.arange(-300, 301)
        golden = {
            'input_ids': ids.tolist(),
            'keep': keep.tolist(),
            'relative': rel.tolist(),
            'buckets': {
                '32/128': relative_position_bucket(rel, 32, 128).tolist(),
                '8/12': relative_position_bucket(rel, 8, 12).tolist(),
            },
        }
        with open(os.path.join(d, 'golden.json'), 'w') as fh:
            json.dump(golden, fh, separators=(',', ':'))
            fh.write('\n')
        mg.write_safetensors(os.path.join(d, 'expected.safetensors'), {'last_hidden_state': out.float()})
        print('wrote', d)


if __name__ == '__main__':
    main()
