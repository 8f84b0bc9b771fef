#!/usr/bin/env python3
"""Golden outputs for worker/model/llama.ts, from an independent PyTorch reference.

transformers is not needed: `forward` below re-implements HF `modeling_llama.py` (LlamaRMSNorm,
LlamaRotaryEmbedding with `modeling_rope_utils` scaling, rotate_half, repeat_kv, eager attention,
LlamaMLP) and `Qwen2` (q/k/v bias), computed in float64 from the stored weights so that the
expected values carry no float32 error of their own.

Each model is written to test/golden/<name>/ in the HF layout (config.json, model.safetensors in
the dtype the config names, or two shards model-0000{1,2}-of-00002.safetensors with
model.safetensors.index.json as `save_pretrained` writes them when a model is sharded) with `golden.json` (input ids, labels, which gradients) and
`expected.safetensors` (F32): `logits` [B,T,V], `token_nll` [B,T-1] (0 where ignored, HF shift
semantics), `nll_sum` [1], and `grad.<name>` for each listed parameter: d(sum NLL)/d(parameter).
A model marked `score` also gets `score.jsonl` (its rows as `tokenized` records, padding dropped)
and `golden.json.score`: what `worker score --json` must print for it, the per-record mean NLL.

Run with Debian's python3 (python3-torch): /usr/bin/python3 scripts/make-golden.py
"""
import json
import math
import os
import struct

import torch

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'test', 'golden')
IGNORE = -100


# --- safetensors writer (no `safetensors` package needed) ------------------------------------------

DTYPES = {'F32': torch.float32, 'F16': torch.float16, 'BF16': torch.bfloat16}


def write_safetensors(path, tensors, dtype='F32', metadata=None):
    header = {}
    if metadata:
        header['__metadata__'] = metadata
    blobs = []
    offset = 0
    for name in sorted(tensors):
        t = tensors[name].detach().to(DTYPES[dtype]).contiguous()
        raw = t.view(torch.int16).numpy().tobytes() if dtype != 'F32' else t.numpy().tobytes()
        header[name] = {'dtype': dtype, 'shape': list(t.shape), 'data_offsets': [offset, offset + len(raw)]}
        offset += len(raw)
        blobs.append(raw)
    h = json.dumps(header, separators=(',', ':')).encode()
    h += b' ' * ((8 - len(h) % 8) % 8)
    with open(path, 'wb') as f:
        f.write(struct.pack('<Q', len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def write_sharded(d, tensors, dtype, first_shard_names):
    """Two shards and an index, as transformers' save_pretrained(max_shard_size=...) lays them out."""
    files = ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors']
    parts = [{k: v for k, v in tensors.items() if k in first_shard_names},
             {k: v for k, v in tensors.items() if k not in first_shard_names}]
    weight_map = {}
    total = 0
    for f, part in zip(files, parts):
        write_safetensors(os.path.join(d, f), part, dtype=dtype, metadata={'format': 'pt'})
        for k, v in part.items():
            weight_map[k] = f
            total += v.numel() * (4 if dtype == 'F32' else 2)
    with open(os.path.join(d, 'model.safetensors.index.json'), 'w') as fh:
        json.dump({'metadata': {'total_size': total}, 'weight_map': dict(sorted(weight_map.items()))}, fh, indent=2)
        fh.write('\n')


# --- reference model ----------------------------------------------------------------------------

def inv_freq(cfg, seq_len):
    """_compute_default_rope_parameters + linear / dynamic / llama3 scaling (modeling_rope_utils)."""
    d = cfg.get('head_dim') or cfg['hidden_size'] // cfg['num_attention_heads']
    base = cfg.get('rope_theta', 10000.0)
    rs = cfg.get('rope_scaling')
    kind = (rs or {}).get('rope_type', (rs or {}).get('type'))
    if kind == 'dynamic' and seq_len > cfg['max_position_embeddings']:
        f = rs['factor']
        base = base * ((f * seq_len / cfg['max_position_embeddings']) - (f - 1)) ** (d / (d - 2))
    inv = 1.0 / (base ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    inv = inv.double()
    if kind == 'linear':
        inv = inv / rs['factor']
    elif kind == 'llama3':
        factor = rs['factor']
        low, high = rs['low_freq_factor'], rs['high_freq_factor']
        old = rs['original_max_position_embeddings']
        low_wl, high_wl = old / low, old / high
        wavelen = 2 * math.pi / inv
        inv_l = torch.where(wavelen > low_wl, inv / factor, inv)
        smooth = (old / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * inv_l / factor + smooth * inv_l
        medium = ~(wavelen < high_wl) * ~(wavelen > low_wl)
        inv = torch.where(medium, smoothed, inv_l)
    return inv


def rms_norm(x, w, eps):
    var = x.pow(2).mean(-1, keepdim=True)
    return w * (x * torch.rsqrt(var + eps))


def rotate_half(x):
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def repeat_kv(x, n_rep):
    b, n_kv, t, d = x.shape
    if n_rep == 1:
        return x
    return x[:, :, None, :, :].expand(b, n_kv, n_rep, t, d).reshape(b, n_kv * n_rep, t, d)


def forward(cfg, P, ids, hooks=None):
    """Logits [B, T, V]. `hooks` (optional, scripts/make-golden-cctuning.py): 'embeddings'(x) reads the
    input embeddings, or returns new ones [B, T', H] (vectors prepended: positions and the causal mask
    then cover T', and the logits are of all T'; scripts/make-golden-lingualift.py), 'ffn'(layer, f) reads a layer's FFN output before the residual add,
    'after_layer'(layer, x) returns the residual stream after a layer (possibly edited)."""
    hooks = hooks or {}
    x = P['model.embed_tokens.weight'][ids]
    if 'embeddings' in hooks:
        edited = hooks['embeddings'](x)
        if edited is not None:
            x = edited
    B, T = x.shape[0], x.shape[1]
    H = cfg['hidden_size']
    nH = cfg['num_attention_heads']
    nKV = cfg.get('num_key_value_heads', nH)
    D = cfg.get('head_dim') or H // nH
    eps = cfg['rms_norm_eps']
    qkv_bias = cfg['model_type'] == 'qwen2' or cfg.get('attention_bias', False)

    pos = torch.arange(T, dtype=torch.float64)[None, :]
    freqs = (inv_freq(cfg, T)[None, :, None] @ pos[:, None, :]).transpose(1, 2)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos()[:, None], emb.sin()[:, None]  # [1, 1, T, D]

    mask = torch.full((T, T), torch.finfo(torch.float64).min, dtype=torch.float64).triu(1)

    for i in range(cfg['num_hidden_layers']):
        p = lambda s: P[f'model.layers.{i}.{s}']
        h = rms_norm(x, p('input_layernorm.weight'), eps)

        def proj(name, n):
            y = h @ p(f'self_attn.{name}.weight').T
            if qkv_bias:
                y = y + p(f'self_attn.{name}.bias')
            return y.view(B, T, n, D).transpose(1, 2)

        q, k, v = proj('q_proj', nH), proj('k_proj', nKV), proj('v_proj', nKV)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k, v = repeat_kv(k, nH // nKV), repeat_kv(v, nH // nKV)
        w = torch.matmul(q, k.transpose(2, 3)) * D ** -0.5 + mask
        w = torch.softmax(w, dim=-1)
        o = torch.matmul(w, v).transpose(1, 2).reshape(B, T, nH * D)
        x = x + o @ p('self_attn.o_proj.weight').T
        h = rms_norm(x, p('post_attention_layernorm.weight'), eps)
        gate = h @ p('mlp.gate_proj.weight').T
        up = h @ p('mlp.up_proj.weight').T
        f = (torch.nn.functional.silu(gate) * up) @ p('mlp.down_proj.weight').T
        if 'ffn' in hooks:
            hooks['ffn'](i, f)
        x = x + f
        if 'after_layer' in hooks:
            x = hooks['after_layer'](i, x)
    x = rms_norm(x, P['model.norm.weight'], eps)
    head = P['model.embed_tokens.weight'] if cfg.get('tie_word_embeddings') else P['lm_head.weight']
    return x @ head.T


def token_nll(logits, labels):
    """HF causal-LM loss terms: logits[:, :-1] predict labels[:, 1:]; -100 ignored (0 here)."""
    V = logits.shape[-1]
    sl = logits[:, :-1].reshape(-1, V)
    lb = labels[:, 1:].reshape(-1)
    nll = torch.nn.functional.cross_entropy(sl, lb, ignore_index=IGNORE, reduction='none')
    return nll.view(labels.shape[0], -1)


# --- random models --------------------------------------------------------------------------------

def tensor_shapes(cfg):
    H = cfg['hidden_size']
    nH = cfg['num_attention_heads']
    nKV = cfg.get('num_key_value_heads', nH)
    D = cfg.get('head_dim') or H // nH
    I = cfg['intermediate_size']
    V = cfg['vocab_size']
    qkv_bias = cfg['model_type'] == 'qwen2' or cfg.get('attention_bias', False)
    s = {'model.embed_tokens.weight': [V, H]}
    for i in range(cfg['num_hidden_layers']):
        L = f'model.layers.{i}.'
        s[L + 'input_layernorm.weight'] = [H]
        s[L + 'self_attn.q_proj.weight'] = [nH * D, H]
        s[L + 'self_attn.k_proj.weight'] = [nKV * D, H]
        s[L + 'self_attn.v_proj.weight'] = [nKV * D, H]
        if qkv_bias:
            s[L + 'self_attn.q_proj.bias'] = [nH * D]
            s[L + 'self_attn.k_proj.bias'] = [nKV * D]
            s[L + 'self_attn.v_proj.bias'] = [nKV * D]
        s[L + 'self_attn.o_proj.weight'] = [H, nH * D]
        s[L + 'post_attention_layernorm.weight'] = [H]
        s[L + 'mlp.gate_proj.weight'] = [I, H]
        s[L + 'mlp.up_proj.weight'] = [I, H]
        s[L + 'mlp.down_proj.weight'] = [H, I]
    s['model.norm.weight'] = [H]
    if not cfg.get('tie_word_embeddings'):
        s['lm_head.weight'] = [V, H]
    return s


def random_params(cfg, gen):
    P = {}
    for name, shape in tensor_shapes(cfg).items():
        if name.endswith('norm.weight'):
            t = 1 + 0.1 * torch.randn(shape, generator=gen)
        elif name.endswith('.bias'):
            t = 0.1 * torch.randn(shape, generator=gen)
        elif 'embed_tokens' in name or 'lm_head' in name:
            t = 0.5 * torch.randn(shape, generator=gen)
        else:
            t = torch.randn(shape, generator=gen) / math.sqrt(shape[1])  # unit-variance activations
        P[name] = t
    return P


BASE = {
    'architectures': ['LlamaForCausalLM'],
    'model_type': 'llama',
    'vocab_size': 256,
    'hidden_size': 32,
    'intermediate_size': 64,
    'num_hidden_layers': 2,
    'num_attention_heads': 4,
    'num_key_value_heads': 2,
    'max_position_embeddings': 128,
    'rms_norm_eps': 1e-5,
    'rope_theta': 10000.0,
    'rope_scaling': None,
    'hidden_act': 'silu',
    'tie_word_embeddings': False,
    'torch_dtype': 'float32',
    'bos_token_id': 1,
    'eos_token_id': 2,
}

MODELS = {
    # GQA (4 query heads over 2 kv heads), F32, untied.
    'llama-gqa': ({}, ['model.layers.0.mlp.up_proj.weight', 'model.layers.1.mlp.down_proj.weight']),
    # Llama 3.1 rope scaling, MHA, tied embeddings, BF16 weights; also the gradient for the
    # tied embedding (through both the input gather and the output projection).
    'llama3-rope-tied': (
        {
            'num_key_value_heads': 4,
            'rope_theta': 500000.0,
            'rope_scaling': {'rope_type': 'llama3', 'factor': 8.0, 'low_freq_factor': 1.0,
                             'high_freq_factor': 4.0, 'original_max_position_embeddings': 16},
            'tie_word_embeddings': True,
            'torch_dtype': 'bfloat16',
            'eos_token_id': [2, 3],
        },
        ['model.layers.0.mlp.up_proj.weight', 'model.layers.1.mlp.down_proj.weight', 'model.embed_tokens.weight'],
    ),
    # Qwen2: q/k/v bias, 4 query heads over 1 kv head, F16 weights, linear-free large theta.
    'qwen2-bias': (
        {
            'architectures': ['Qwen2ForCausalLM'],
            'model_type': 'qwen2',
            'num_key_value_heads': 1,
            'rope_theta': 1000000.0,
            'rms_norm_eps': 1e-6,
            'torch_dtype': 'float16',
        },
        ['model.layers.0.mlp.up_proj.weight', 'model.layers.1.mlp.down_proj.weight', 'model.layers.0.self_attn.q_proj.bias'],
    ),
    # Mistral with linear rope scaling and an explicit head_dim (hidden 32, 2 heads of 8).
    'mistral-linear': (
        {
            'architectures': ['MistralForCausalLM'],
            'model_type': 'mistral',
            'num_attention_heads': 2,
            'num_key_value_heads': 1,
            'head_dim': 8,
            'rope_scaling': {'type': 'linear', 'factor': 4.0},
            'sliding_window': None,
        },
        ['model.layers.0.mlp.up_proj.weight', 'model.layers.1.mlp.down_proj.weight'],
    ),
    # GQA (8 query heads over 2 kv heads), BF16, two shards with an index; also scored through
    # `worker score`. Shard 1: the embedding and layer 0; shard 2: the rest.
    'llama-gqa-bf16-sharded': (
        {'num_attention_heads': 8, 'num_key_value_heads': 2, 'torch_dtype': 'bfloat16'},
        ['model.layers.0.mlp.up_proj.weight', 'model.layers.1.mlp.down_proj.weight'],
        {'shard_first': lambda n: n == 'model.embed_tokens.weight' or n.startswith('model.layers.0.'), 'score': True},
    ),
    # Dynamic NTK rope scaling: max_position_embeddings 8 < T = 12, so the base grows (HF
    # `_compute_dynamic_ntk_parameters` with seq_len = T).
    'llama-dynamic': (
        {'max_position_embeddings': 8, 'rope_scaling': {'rope_type': 'dynamic', 'factor': 2.0}},
        ['model.layers.0.mlp.up_proj.weight', 'model.layers.1.mlp.down_proj.weight'],
    ),
}

DTYPE_OF = {'float32': 'F32', 'bfloat16': 'BF16', 'float16': 'F16'}


def main():
    for idx, (name, spec) in enumerate(MODELS.items()):
        overrides, grad_names = spec[0], spec[1]
        opts = spec[2] if len(spec) > 2 else {}
        cfg = {**BASE, **overrides}
        gen = torch.Generator().manual_seed(1234 + idx)
        P = random_params(cfg, gen)
        dt = DTYPE_OF[cfg['torch_dtype']]
        # The stored (possibly narrowed) weights are the model: widen them to float64 for the reference.
        P = {k: v.to(DTYPES[dt]).double() for k, v in P.items()}

        B, T, V = 3, 12, cfg['vocab_size']
        ids = torch.randint(3, V, (B, T), generator=gen)
        labels = ids.clone()
        labels[0, :5] = IGNORE             # a prompt: no loss on it
        labels[1, 8:] = IGNORE             # right padding...
        ids[1, 8:] = 2                     # ...with EOS as the pad token
        labels[2, 3] = IGNORE              # a hole in the middle
        labels[2, 0] = 7                   # labels[:, 0] is never used, whatever it says

        leaves = {k: v.clone().requires_grad_(k in grad_names) for k, v in P.items()}
        logits = forward(cfg, leaves, ids)
        nll = token_nll(logits, labels)
        total = nll.sum()
        total.backward()

        d = os.path.join(OUT, name)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, 'config.json'), 'w') as f:
            json.dump(cfg, f, indent=2)
            f.write('\n')
        if 'shard_first' in opts:
            write_sharded(d, P, dt, {k for k in P if opts['shard_first'](k)})
        else:
            write_safetensors(os.path.join(d, 'model.safetensors'), P, dtype=dt, metadata={'format': 'pt'})
        expected = {
            'logits': logits.detach().float(),
            'token_nll': nll.detach().float(),
            'nll_sum': total.detach().float().reshape(1),
        }
        for g in grad_names:
            expected['grad.' + g] = leaves[g].grad.float()
        write_safetensors(os.path.join(d, 'expected.safetensors'), expected, dtype='F32')
        meta = {'input_ids': ids.tolist(), 'labels': labels.tolist(), 'grads': grad_names}
        if opts.get('score'):
            # Row 1 is right-padded from position 8: the record is its first 8 tokens.
            lengths = [T, 8, T]
            with open(os.path.join(d, 'score.jsonl'), 'w') as f:
                for b in range(B):
                    f.write(json.dumps({'input_ids': ids[b, :lengths[b]].tolist(), 'labels': labels[b, :lengths[b]].tolist()}) + '\n')
            score = []
            for b in range(B):
                mask = labels[b, 1:] != IGNORE
                n = int(mask.sum())
                score.append({'index': b, 'nll': nll[b][mask].sum().item() / n, 'tokens': n})
            meta['score'] = score
        with open(os.path.join(d, 'golden.json'), 'w') as f:
            json.dump(meta, f)
            f.write('\n')
        size = sum(os.path.getsize(os.path.join(d, x)) for x in os.listdir(d))
        print(f'{name}: nll_sum={total.item():.6f} tokens={(labels[:, 1:] != IGNORE).sum().item()} bytes={size}')


if __name__ == '__main__':
    main()
