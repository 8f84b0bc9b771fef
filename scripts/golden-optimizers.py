#!/usr/bin/env python3
"""Golden values for test/unit/optimizers.test.ts, from PyTorch (Debian python3-torch).

Run: /usr/bin/python3 scripts/golden-optimizers.py > test/golden/optimizers.json
AdamW (lr 0.01, betas 0.9/0.95, eps 1e-8, weight decay 0.1) and SGD (lr 0.1) for 4 steps on a
5-element parameter with fixed gradients, gradients clipped to norm 1.0 by clip_grad_norm_, and
the HF cosine/linear schedules with warm-up (transformers' formulas, written out)."""
import json, math
import torch

p0 = [0.5, -1.25, 2.0, 0.0, 3.5]
grads = [[0.1, -0.2, 0.3, 0.4, -0.5], [1.0, 2.0, -3.0, 0.5, 0.25], [0.0, 0.01, -0.02, 0.03, 0.0], [-0.3, 0.3, -0.3, 0.3, 0.9]]

def run(make_opt, clip):
    p = torch.nn.Parameter(torch.tensor(p0, dtype=torch.float32))
    opt = make_opt([p])
    out, norms = [], []
    for g in grads:
        p.grad = torch.tensor(g, dtype=torch.float32)
        norms.append(float(torch.nn.utils.clip_grad_norm_([p], clip)) if clip > 0 else 0.0)
        opt.step()
        out.append(p.detach().tolist())
    return out, norms

adamw, adamw_norms = run(lambda ps: torch.optim.AdamW(ps, lr=0.01, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1), 1.0)
sgd, _ = run(lambda ps: torch.optim.SGD(ps, lr=0.1), 0)

def cosine(step, warmup, total):
    if step < warmup: return step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress)))

def linear(step, warmup, total):
    if step < warmup: return step / max(1, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))

total, ratio = 20, 0.1
warmup = math.ceil(ratio * total)
print(json.dumps({
    "p0": p0, "grads": grads, "adamw": adamw, "adamwNorms": adamw_norms, "sgd": sgd,
    "schedule": {"total": total, "warmupRatio": ratio,
                 "cosine": [cosine(s, warmup, total) for s in range(total)],
                 "linear": [linear(s, warmup, total) for s in range(total)]},
}, indent=1))
