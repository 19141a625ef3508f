"""PyTorch reference of paged attention, written from the definition in ops/paged_attention.h.

For every sequence the keys and values of positions [0, context_len) are gathered through its
block-table row (position p is row p % block_size of block block_table[i][p // block_size]), the
query rows sit at positions context_len - q_len + j, and a causal (optionally sliding-window) mask
feeds torch.softmax. Rows of q that no sequence owns come out zero.
"""
import math

import torch


def paged_attention(inputs, params):
    q = inputs["q"]  # [T,Hq,D]
    k_cache = inputs["k_cache"]  # [num_blocks, block_size, Hkv, D]
    v_cache = inputs["v_cache"]
    query_start = inputs["query_start"].tolist()  # [N+1]
    context_len = inputs["context_len"].tolist()  # [N]
    block_table = inputs["block_table"]  # [N, max_blocks]
    hq, d = q.shape[1], q.shape[2]
    block_size, hkv = k_cache.shape[1], k_cache.shape[2]
    scale = params.get("scale", 0.0) or 1.0 / math.sqrt(d)
    window = params.get("window", -1)

    out = torch.zeros_like(q)
    for i, ctx in enumerate(context_len):
        q0, q1 = query_start[i], query_start[i + 1]
        q_len = q1 - q0
        if q_len == 0:
            continue
        pos = torch.arange(ctx)
        # Entries the op never reads may be -1; clamp them so the gather stays in range (those
        # keys are masked below).
        blocks = block_table[i, pos // block_size].clamp(min=0)
        k = k_cache[blocks, pos % block_size]  # [ctx,Hkv,D]
        v = v_cache[blocks, pos % block_size]
        k = k.repeat_interleave(hq // hkv, dim=1).transpose(0, 1)  # [Hq,ctx,D]
        v = v.repeat_interleave(hq // hkv, dim=1).transpose(0, 1)
        qh = q[q0:q1].transpose(0, 1)  # [Hq,q_len,D]
        scores = (qh @ k.transpose(-2, -1)) * scale  # [Hq,q_len,ctx]
        qpos = ctx - q_len + torch.arange(q_len)
        diff = qpos[:, None] - pos[None, :]
        visible = diff >= 0
        if window > 0:
            visible &= diff < window
        scores = scores.masked_fill(~visible, float("-inf"))
        out[q0:q1] = (torch.softmax(scores, dim=-1) @ v).transpose(0, 1)
    return {"out": out}


OPS = {"paged_attention": paged_attention}
