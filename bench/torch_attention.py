#!/usr/bin/env python3
"""PyTorch's math-path attention, timed for bench_attention.

This is the way torch 1.13 computes attention without a fused kernel: explicit q @ k^T, a causal
mask filled with -inf, softmax, @ v, and autograd for backward. GQA repeats k and v over the query
heads that share them.

Usage: torch_attention.py --threads N [--repeats R] --case B,Hq,Hkv,S,D,dtype [--case ...]
Prints one JSON line per case: {"case": "...", "fwd_ms": ..., "fwdbwd_ms": ...} (best of R).
"""
import argparse
import json
import math
import time

import torch


def attention(q, k, v, mask, scale):
    # q [B,S,Hq,D], k/v [B,S,Hkv,D] (token-major like origami) -> out [B,S,Hq,D]
    groups = q.shape[2] // k.shape[2]
    qh = q.transpose(1, 2)
    kh = k.transpose(1, 2).repeat_interleave(groups, dim=1)
    vh = v.transpose(1, 2).repeat_interleave(groups, dim=1)
    scores = (qh @ kh.transpose(-2, -1)) * scale
    scores = scores.masked_fill(mask, float("-inf"))
    p = torch.softmax(scores, dim=-1)
    return (p @ vh).transpose(1, 2)


def best_ms(fn, repeats):
    fn()  # warm-up
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def run_case(spec, repeats):
    b, hq, hkv, s, d, dt = spec.split(",")
    b, hq, hkv, s, d = int(b), int(hq), int(hkv), int(s), int(d)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[dt]
    g = torch.Generator().manual_seed(0)
    q = torch.randn(b, s, hq, d, generator=g).to(dtype)
    k = torch.randn(b, s, hkv, d, generator=g).to(dtype)
    v = torch.randn(b, s, hkv, d, generator=g).to(dtype)
    dout = torch.randn(b, s, hq, d, generator=g).to(dtype)
    mask = torch.ones(s, s, dtype=torch.bool).triu(1)
    scale = 1.0 / math.sqrt(d)

    def fwd():
        with torch.no_grad():
            attention(q, k, v, mask, scale)

    qg, kg, vg = (t.clone().requires_grad_(True) for t in (q, k, v))

    def fwdbwd():
        out = attention(qg, kg, vg, mask, scale)
        out.backward(dout)
        qg.grad = kg.grad = vg.grad = None

    return {"case": spec, "fwd_ms": best_ms(fwd, repeats), "fwdbwd_ms": best_ms(fwdbwd, repeats)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--case", action="append", default=[])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for spec in args.case:
        print(json.dumps(run_case(spec, args.repeats)), flush=True)


if __name__ == "__main__":
    main()
