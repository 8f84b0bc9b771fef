#!/usr/bin/env python3
"""Golden gradients of one fused CC-Tuning step (worker/methods/cctuning.ts), from an independent
PyTorch reference in float64, on two golden models of scripts/make-golden.py (their stored weights).

Per model: two samples (a non-English sequence with its prompt length, and an English prompt), a
Decision Maker W [L, H] and Gumbel noise [B, L] drawn here and written to the JSON, so the step is
fixed. The reference, as the authors' llamawrapper_mlp.py (with the English pass without gradient,
as the issue asks):
  E[b, l]  = FFN output of layer l at the English prompt's last token (no grad)
  v[b]     = mean_l E[b, l] + embedding of the non-English prompt's last token
  y        = hard Gumbel-softmax((v W^T + g) / tau), straight-through (hard - soft.detach() + soft)
  after decoder layer k: x[b, p_b] += sum_l y[b, l] E[b, l]
  loss     = summed token NLL of the response (HF shift)
Writes test/golden/cctuning/<model>.json (inputs, W, noise, tau, k, expected choices and row NLLs)
and <model>.safetensors (F32 grad.<name> for every model tensor and grad.decision_maker.weight);
and transform.safetensors: A, B and numpy's lstsq X for the Transform Matrix's solve.

Run: /usr/bin/python3 scripts/make-golden-cctuning.py
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

GOLDEN = os.path.join(HERE, '..', 'test', 'golden')
OUT = os.path.join(GOLDEN, 'cctuning')
# model, tau, injectAfterLayer, scale of W (logits of moderate size: a saturated softmax has a vanishing,
# float32-rounding-dominated Decision Maker gradient)
CASES = [('llama-gqa', 0.7, 0, 0.5), ('llama3-rope-tied', 1.0, 1, 0.05)]


def read_safetensors(path):
    with open(path, 'rb') as f:
        n = struct.unpack('<Q', f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == '__metadata__':
            continue
        a, b = info['data_offsets']
        raw = bytearray(data[a:b])
        if info['dtype'] == 'F32':
            t = torch.frombuffer(raw, dtype=torch.float32)
        else:
            t = torch.frombuffer(raw, dtype=torch.int16).view(mg.DTYPES[info['dtype']]).float()
        out[name] = t.reshape(info['shape']).double()
    return out


def main():
    os.makedirs(OUT, exist_ok=True)
    for idx, (name, tau, k, w_scale) in enumerate(CASES):
        d = os.path.join(GOLDEN, name)
        cfg = json.load(open(os.path.join(d, 'config.json')))
        P = read_safetensors(os.path.join(d, 'model.safetensors'))
        L, H, V = cfg['num_hidden_layers'], cfg['hidden_size'], cfg['vocab_size']
        gen = torch.Generator().manual_seed(4242 + idx)
        B, T = 2, 10
        prompt_len = [4, 6]
        ids = torch.randint(3, V, (B, T), generator=gen)
        labels = ids.clone()
        for b in range(B):
            labels[b, :prompt_len[b]] = mg.IGNORE
        labels[1, 9:] = mg.IGNORE  # right padding
        ids[1, 9:] = 2
        english = [torch.randint(3, V, (n,), generator=gen) for n in (3, 7)]
        W = torch.randn(L, H, generator=gen, dtype=torch.float64) * w_scale
        noise = -torch.log(-torch.log(torch.rand(B, L, generator=gen, dtype=torch.float64).clamp(1e-9, 1 - 1e-9)))
        # The stored weights are float32 / bf16 values: the test loads the same.
        W = W.float().double()
        noise = noise.float().double()

        # 1. English pass, no gradient.
        E = torch.zeros(B, L, H, dtype=torch.float64)
        with torch.no_grad():
            for b, e in enumerate(english):
                def ffn(i, f, b=b, n=len(e)):
                    E[b, i] = f[0, n - 1]
                mg.forward(cfg, P, e[None, :], {'ffn': ffn})

        # 2-3. Fused non-English pass with the Decision Maker and injection after layer k.
        leaves = {n: v.clone().requires_grad_(True) for n, v in P.items()}
        Wl = W.clone().requires_grad_(True)
        state = {}

        def embeddings(x):
            emb = torch.stack([x[b, prompt_len[b] - 1] for b in range(B)])
            v = E.mean(1) + emb
            soft = torch.softmax((v @ Wl.T + noise) / tau, dim=-1)
            hard = torch.nn.functional.one_hot(soft.argmax(-1), L).double()
            y = hard - soft.detach() + soft
            state['choices'] = soft.argmax(-1).tolist()
            state['inject'] = torch.einsum('bl,blh->bh', y, E)

        def after_layer(i, x):
            if i != k:
                return x
            add = torch.zeros_like(x)
            for b in range(B):
                add[b, prompt_len[b] - 1] = state['inject'][b]
            return x + add

        logits = mg.forward(cfg, leaves, ids, {'embeddings': embeddings, 'after_layer': after_layer})
        nll = mg.token_nll(logits, labels)
        total = nll.sum()
        total.backward()

        expected = {'grad.' + n: v.grad.float() for n, v in leaves.items()}
        expected['grad.decision_maker.weight'] = Wl.grad.float()
        mg.write_safetensors(os.path.join(OUT, f'{name}.safetensors'), expected, dtype='F32')
        meta = {
            'model': name,
            'tau': tau,
            'injectAfterLayer': k,
            'input_ids': ids.tolist(),
            'labels': labels.tolist(),
            'prompt_length': prompt_len,
            'english': [e.tolist() for e in english],
            'decision_maker': W.flatten().tolist(),
            'noise': noise.flatten().tolist(),
            'choices': state['choices'],
            'row_nll': nll.sum(1).tolist(),
        }
        with open(os.path.join(OUT, f'{name}.json'), 'w') as f:
            json.dump(meta, f)
            f.write('\n')
        print(f"{name}: nll_sum={total.item():.6f} choices={state['choices']} grads={len(expected)}")


def transform_golden():
    """A, B [n, H] float32 (B = A X0 + noise, A with a spread of column scales) and numpy's lstsq X of
    them in float64, as the authors' get_matrix.py solves it: test/golden/cctuning/transform.safetensors."""
    import numpy as np
    rng = np.random.default_rng(77)
    n, h = 48, 16
    a = (rng.standard_normal((n, h)) * np.logspace(0, 1.5, h)).astype(np.float32)
    x0 = rng.standard_normal((h, h))
    b = (a.astype(np.float64) @ x0 + 0.1 * rng.standard_normal((n, h))).astype(np.float32)
    x, _, _, _ = np.linalg.lstsq(a.astype(np.float64), b.astype(np.float64), rcond=None)
    mg.write_safetensors(os.path.join(OUT, 'transform.safetensors'), {
        'A': torch.from_numpy(a), 'B': torch.from_numpy(b), 'X': torch.from_numpy(x.astype(np.float32)),
    }, dtype='F32')
    print(f'transform: A {a.shape}, cond(A)={np.linalg.cond(a.astype(np.float64)):.3g}')


if __name__ == '__main__':
    main()
    transform_golden()
