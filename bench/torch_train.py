#!/usr/bin/env python3
"""PyTorch side of bench/bench_train.cpp: one training step of a Llama-style decoder (dense, or
Mixtral-style MoE) written with plain torch.nn modules, the way a typical implementation is:

  embedding, RMSNorm, q/k/v/o Linear without bias, RoPE (rotate-half), causal attention as an
  explicit matmul + mask + softmax + matmul (torch 1.13 has no fused attention on the CPU),
  SwiGLU MLP; MoE: softmax router, top-k with the k weights renormalised, a loop over the experts
  gathering their tokens with index_select and adding the outputs back with index_add_ (as
  transformers' MixtralSparseMoeBlock does), the load-balancing loss; cross-entropy on fp32
  logits; torch.optim.AdamW.

A step is zero_grad(set_to_none) + forward + backward + AdamW step.

dtype f32: everything fp32. dtype bf16 with --bf16-mode:
  cast      model.to(torch.bfloat16): bf16 weights, activations, gradients and AdamW state;
  autocast  fp32 weights, gradients and AdamW state, matmuls in bf16 under
            torch.autocast('cpu', dtype=torch.bfloat16) (the closest to origami's fp32 master
            weights with a bf16 compute copy).

Usage: torch_train.py --case CASE [--threads N] [--steps R] [--warmup W]
                      [--bf16-mode cast|autocast] [--budget-s S]
  CASE = dtype,B,S,V,H,L,Hq,Hkv,D,F,E,K,Fe,tie (dtype f32 or bf16; E = 0 for a dense model).

The caller times its own steps in between this process's, so that both see the same load on a
shared machine. After building the model and W warm-up steps, it prints one JSON line
{"mode", "batch", "steps", "params", "blas"}, then runs one step for every line read on stdin
and answers each with {"s": seconds, "loss": loss}; it exits at the end of stdin.
One or two steps at batch 1 warm up and estimate the step time; when W + R steps at batch B would
take longer than --budget-s (fp32 on a slow BLAS), the batch is halved until 2 steps fit and
then as many steps as fit (up to R) are run: "batch" and "steps" say what the caller should ask
for.
"blas" is the BLAS library torch loaded, which runs its fp32 matmul.
"""
import argparse
import json
import math
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Attention(nn.Module):
    def __init__(self, h, hq, hkv, d):
        super().__init__()
        self.hq, self.hkv, self.d = hq, hkv, d
        self.q_proj = nn.Linear(h, hq * d, bias=False)
        self.k_proj = nn.Linear(h, hkv * d, bias=False)
        self.v_proj = nn.Linear(h, hkv * d, bias=False)
        self.o_proj = nn.Linear(hq * d, h, bias=False)

    def forward(self, x, cos, sin, mask):
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, self.hq, self.d).transpose(1, 2)
        k = self.k_proj(x).view(b, s, self.hkv, self.d).transpose(1, 2)
        v = self.v_proj(x).view(b, s, self.hkv, self.d).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if self.hkv != self.hq:
            k = k.repeat_interleave(self.hq // self.hkv, dim=1)
            v = v.repeat_interleave(self.hq // self.hkv, dim=1)
        scores = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(self.d)
        scores = scores + mask
        p = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        out = torch.matmul(p, v).transpose(1, 2).reshape(b, s, self.hq * self.d)
        return self.o_proj(out)


class MLP(nn.Module):
    def __init__(self, h, f):
        super().__init__()
        self.gate_proj = nn.Linear(h, f, bias=False)
        self.up_proj = nn.Linear(h, f, bias=False)
        self.down_proj = nn.Linear(f, h, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class MoE(nn.Module):
    def __init__(self, h, e, k, fe):
        super().__init__()
        self.e, self.k = e, k
        self.gate = nn.Linear(h, e, bias=False)
        self.experts = nn.ModuleList([MLP(h, fe) for _ in range(e)])

    def forward(self, x):
        b, s, h = x.shape
        x = x.view(-1, h)
        router_logits = self.gate(x)
        probs = F.softmax(router_logits, dim=1, dtype=torch.float32)
        weights, chosen = torch.topk(probs, self.k, dim=-1)
        weights = (weights / weights.sum(dim=-1, keepdim=True)).to(x.dtype)
        out = torch.zeros_like(x)
        # expert_mask [E, k, T]: which (slot, token) pairs chose each expert
        expert_mask = F.one_hot(chosen, num_classes=self.e).permute(2, 1, 0)
        for e, expert in enumerate(self.experts):
            slot, token = torch.where(expert_mask[e])
            if token.numel() == 0:
                continue
            y = expert(x.index_select(0, token)) * weights[token, slot, None]
            out.index_add_(0, token, y.to(x.dtype))
        # transformers' load_balancing_loss_func: E * sum_e (fraction routed to e) * (mean prob)
        tokens_per_expert = expert_mask.float().sum(dim=(1, 2)) / float(x.shape[0])
        aux = self.e * torch.sum(tokens_per_expert * probs.mean(dim=0)) / self.k
        return out.view(b, s, h), aux


class Block(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.input_layernorm = RMSNorm(a.H)
        self.self_attn = Attention(a.H, a.Hq, a.Hkv, a.D)
        self.post_attention_layernorm = RMSNorm(a.H)
        self.moe = a.E > 0
        self.mlp = MoE(a.H, a.E, a.K, a.Fe) if self.moe else MLP(a.H, a.F)

    def forward(self, x, cos, sin, mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        if self.moe:
            y, aux = self.mlp(self.post_attention_layernorm(x))
        else:
            y, aux = self.mlp(self.post_attention_layernorm(x)), None
        return x + y, aux


class Decoder(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.a = a
        self.embed_tokens = nn.Embedding(a.V, a.H)
        self.layers = nn.ModuleList([Block(a) for _ in range(a.L)])
        self.norm = RMSNorm(a.H)
        self.lm_head = nn.Linear(a.H, a.V, bias=False)
        if a.tie:
            self.lm_head.weight = self.embed_tokens.weight
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
        inv_freq = 1.0 / (10000.0 ** (torch.arange(0, a.D, 2).float() / a.D))
        freqs = torch.outer(torch.arange(a.S).float(), inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)
        self.register_buffer(
            "mask", torch.full((a.S, a.S), float("-inf")).triu(1), persistent=False)

    def forward(self, ids, targets, aux_coeff):
        x = self.embed_tokens(ids)
        dtype = x.dtype if not torch.is_autocast_cpu_enabled() else torch.bfloat16
        cos, sin, mask = self.cos.to(dtype), self.sin.to(dtype), self.mask.to(dtype)
        aux_total = 0.0
        for layer in self.layers:
            x, aux = layer(x, cos, sin, mask)
            if aux is not None:
                aux_total = aux_total + aux
        logits = self.lm_head(self.norm(x)).float()
        loss = F.cross_entropy(logits.view(-1, self.a.V), targets.view(-1))
        if self.a.E > 0:
            loss = loss + aux_coeff * aux_total / self.a.L
        return loss


def parse_case(text):
    f = text.split(",")
    a = argparse.Namespace()
    a.dtype = f[0]
    (a.B, a.S, a.V, a.H, a.L, a.Hq, a.Hkv, a.D, a.F, a.E, a.K, a.Fe, tie) = (int(v) for v in f[1:])
    a.tie = tie != 0
    return a


def loaded_blas():
    """The BLAS library this process loaded (torch's fp32 matmul goes through it)."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split()[-1]
                if "blas" in path.rsplit("/", 1)[-1].lower():
                    return path
    except OSError:
        pass
    return "?"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--bf16-mode", choices=["cast", "autocast"], default="cast")
    ap.add_argument("--budget-s", type=float, default=300.0)
    ap.add_argument("--aux-coeff", type=float, default=0.01)
    ap.add_argument("--case", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    a = parse_case(args.case)
    bf16 = a.dtype == "bf16"
    mode = args.bf16_mode if bf16 else "fp32"

    model = Decoder(a)
    if mode == "cast":
        model = model.to(torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)

    def make_step(batch):
        g = torch.Generator().manual_seed(1)
        ids = torch.randint(0, a.V, (batch, a.S), generator=g)
        targets = torch.randint(0, a.V, (batch, a.S), generator=g)

        def step():
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "autocast"):
                loss = model(ids, targets, args.aux_coeff)
            loss.backward()
            opt.step()
            return float(loss)

        return step

    def seconds(fn):
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    one = seconds(make_step(1))
    if one < 0.1 * args.budget_s:  # the first step includes one-time set-up: time another
        one = min(one, seconds(make_step(1)))
    batch = a.B

    def warmup():  # batch 1 is warm already
        return args.warmup if batch > 1 else max(0, args.warmup - 1)

    while batch > 1 and one * batch * (warmup() + 2) > args.budget_s:
        batch //= 2
    steps = max(2, min(args.steps, int(args.budget_s / (one * batch)) - warmup()))
    step = make_step(batch)
    for _ in range(warmup()):
        step()
    print(json.dumps({"mode": mode, "batch": batch, "steps": steps, "params": params,
                      "blas": loaded_blas()}), flush=True)
    for _ in sys.stdin:
        t0 = time.perf_counter()
        loss = step()
        print(json.dumps({"s": time.perf_counter() - t0, "loss": loss}), flush=True)


if __name__ == "__main__":
    main()
