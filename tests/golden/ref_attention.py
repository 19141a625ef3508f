"""PyTorch reference of the attention family: scores built explicitly, float64 autograd.

Grouped-query heads repeat k and v over the query heads that share them (repeat_interleave); the
mask compares absolute positions q_offset + i and k_offset + j; a row that sees no key has output 0
and lse -inf.
"""
import math

import torch


def _visible(sq, sk, params):
    qpos = params.get("q_offset", 0) + torch.arange(sq)
    kpos = params.get("k_offset", 0) + torch.arange(sk)
    diff = qpos[:, None] - kpos[None, :]
    vis = torch.ones(sq, sk, dtype=torch.bool)
    if params.get("causal", True):
        vis &= diff >= 0
    window = params.get("window", -1)
    if window > 0:
        vis &= (diff >= 0) & (diff < window)
    return vis


def attention(inputs, params):
    q = inputs["q"].clone().requires_grad_(True)  # [B,Sq,Hq,D]
    k = inputs["k"].clone().requires_grad_(True)  # [B,Sk,Hkv,D]
    v = inputs["v"].clone().requires_grad_(True)
    dout = inputs["dout"]
    sq, hq, d = q.shape[1], q.shape[2], q.shape[3]
    sk, hkv = k.shape[1], k.shape[2]
    groups = hq // hkv
    scale = params.get("scale", 0.0) or 1.0 / math.sqrt(d)

    qh = q.transpose(1, 2)  # [B,Hq,Sq,D]
    kh = k.transpose(1, 2).repeat_interleave(groups, dim=1)
    vh = v.transpose(1, 2).repeat_interleave(groups, dim=1)
    scores = (qh @ kh.transpose(-2, -1)) * scale  # [B,Hq,Sq,Sk]
    vis = _visible(sq, sk, params)
    row_any = vis.any(dim=-1)  # [Sq]
    # Rows with no visible key stay unmasked (so softmax is defined) and are zeroed afterwards.
    scores = scores.masked_fill(~vis & row_any[:, None], float("-inf"))
    p = torch.softmax(scores, dim=-1) * row_any[:, None]
    out = (p @ vh).transpose(1, 2)  # [B,Sq,Hq,D]
    lse = torch.where(row_any, torch.logsumexp(scores, dim=-1), torch.tensor(float("-inf"),
                                                                              dtype=q.dtype))
    out.backward(dout)
    return {"out": out.detach(), "lse": lse.detach(), "dq": q.grad, "dk": k.grad, "dv": v.grad}


OPS = {"attention": attention}
