#!/usr/bin/env python3
"""Golden gradients of LinguaLIFT's alignment layer through a frozen LLM (worker/methods/lingualift.ts
`loss`), from an independent PyTorch reference in float64.

The encoder is test/golden/t5-encoder (scripts/make-golden-t5.py's `encode`, its stored weights); the
LLMs are golden models of scripts/make-golden.py (their `forward`, with the embeddings hook returning
the prefixed embeddings). Per case, two rows, each computed alone (no padding anywhere, so the
reference does not share the left-padding and masks the TypeScript batch uses):
  s_b      = T5 encoder states of row b's encoder ids                [n_b, d_enc]
  m_b      = MLP(s_b): Linear, then (GELU tanh, Linear) per further layer  [n_b, H]
  prepend: x_b = [m_b, separator, embed(ids_b)]     replace: x_b = [m_b, embed(ids_b)]
  loss     = summed token NLL of the LLM's own positions (HF shift; the prefix takes none)
Only the alignment tensors take gradient: the LLM and the encoder are constants.

Writes test/golden/lingualift/<case>.json (model, fusion, depth, encoder ids, LLM ids and labels,
expected row NLLs) and <case>.safetensors (F32: the alignment tensors `alignment.*` and their
gradients `grad.alignment.*`).

Run: /usr/bin/python3 scripts/make-golden-lingualift.py
"""
import importlib.util
import json
import os

import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def load(name, file):
    spec = importlib.util.spec_from_file_location(name, os.path.join(HERE, file))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # their main() only runs as a script
    return mod


mg = load('make_golden', 'make-golden.py')
t5 = load('make_golden_t5', 'make-golden-t5.py')
cc = load('make_golden_cctuning', 'make-golden-cctuning.py')  # read_safetensors

GOLDEN = os.path.join(HERE, '..', 'test', 'golden')
OUT = os.path.join(GOLDEN, 'lingualift')
ENCODER = 't5-encoder'
# case, LLM, fusion, depth, inner width
CASES = [
    ('llama-gqa-prepend', 'llama-gqa', 'prepend', 2, 24),
    ('llama3-rope-tied-replace', 'llama3-rope-tied', 'replace', 1, None),
]


def gelu_tanh(x):
    return t5.gelu_new(x)


def main():
    os.makedirs(OUT, exist_ok=True)
    ecfg = json.load(open(os.path.join(GOLDEN, ENCODER, 'config.json')))
    E = cc.read_safetensors(os.path.join(GOLDEN, ENCODER, 'model.safetensors'))
    d_enc = ecfg['d_model']
    for idx, (case, name, fusion, depth, inner) in enumerate(CASES):
        d = os.path.join(GOLDEN, name)
        cfg = json.load(open(os.path.join(d, 'config.json')))
        P = cc.read_safetensors(os.path.join(d, 'model.safetensors'))
        H, V = cfg['hidden_size'], cfg['vocab_size']
        inner = inner or H
        gen = torch.Generator().manual_seed(5150 + idx)
        # Encoder ids of 5 and 3 tokens (ending with EOS, as the tokenizer makes them).
        enc_ids = [torch.randint(2, ecfg['vocab_size'], (n,), generator=gen) for n in (5, 3)]
        for e in enc_ids:
            e[-1] = ecfg['eos_token_id']
        B, T = 2, 7
        ids = torch.randint(3, V, (B, T), generator=gen)
        labels = ids.clone()
        labels[0, :3] = mg.IGNORE
        labels[1, :2] = mg.IGNORE
        labels[1, 6:] = mg.IGNORE  # right padding
        ids[1, 6:] = 2

        # The alignment layer: weights large enough that the prefix matters to the loss.
        A = {}
        for i in range(depth):
            fan_in = d_enc if i == 0 else inner
            fan_out = H if i == depth - 1 else inner
            A[f'alignment.{i}.weight'] = (torch.randn(fan_out, fan_in, generator=gen, dtype=torch.float64) * 0.3)
            A[f'alignment.{i}.bias'] = (torch.randn(fan_out, generator=gen, dtype=torch.float64) * 0.1)
        if fusion == 'prepend':
            A['alignment.separator'] = torch.randn(H, generator=gen, dtype=torch.float64) * 0.5
        A = {n: v.float().double().requires_grad_(True) for n, v in A.items()}  # float32 values, as stored

        rows = []
        for b in range(B):
            e = enc_ids[b][None, :]
            states = t5.encode(ecfg, E, e, torch.ones_like(e), 'shared.weight')[0]  # [n_b, d_enc]
            h = states
            for i in range(depth):
                if i > 0:
                    h = gelu_tanh(h)
                h = h @ A[f'alignment.{i}.weight'].T + A[f'alignment.{i}.bias']
            prefix = h if fusion == 'replace' else torch.cat([h, A['alignment.separator'][None, :]], 0)
            n = prefix.shape[0]

            def embeddings(x, prefix=prefix):
                return torch.cat([prefix[None], x], 1)

            logits = mg.forward(cfg, P, ids[b:b + 1], {'embeddings': embeddings})[:, n:]
            rows.append(mg.token_nll(logits, labels[b:b + 1]).sum())
        total = torch.stack(rows).sum()
        total.backward()

        out = {n: v.detach().float() for n, v in A.items()}
        out.update({'grad.' + n: v.grad.float() for n, v in A.items()})
        mg.write_safetensors(os.path.join(OUT, f'{case}.safetensors'), out, dtype='F32')
        meta = {
            'model': name,
            'encoder': ENCODER,
            'fusion': fusion,
            'depth': depth,
            'hidden': inner,
            'encoder_ids': [e.tolist() for e in enc_ids],
            'input_ids': ids.tolist(),
            'labels': labels.tolist(),
            'row_nll': [r.item() for r in rows],
        }
        with open(os.path.join(OUT, f'{case}.json'), 'w') as f:
            json.dump(meta, f)
            f.write('\n')
        print(f'{case}: nll_sum={total.item():.6f} tensors={len(A)}')


if __name__ == '__main__':
    main()
