"""PyTorch references (float64) for weight quantization: GPTQ, round-to-nearest (RTN), and the
Hugging Face GPTQ tensor layout (AutoGPTQ / Optimum), written from the algorithm and layout
descriptions in models/gptq.h and runtime/gptq_format.h (3-bit words as AutoGPTQ's packer lays
them out).

Ops (inputs float64 / int64, as tests/golden/torch_ops.py hands them):
  gptq_quantize  W [rows, cols], X [tokens, cols]   -> q, scales, zeros, g_idx, err
  rtn_quantize   W [rows, cols], X [tokens, cols]   -> q, scales, zeros, g_idx, err
  gptq_pack      q [rows, cols], zeros [G, rows], scales [G, rows], g_idx [cols]
                 -> qweight, qzeros, scales (fp16 values), g_idx
  gptq_unpack    qweight, qzeros, scales, g_idx     -> q, zeros, scales, g_idx
params: bits, group_size (-1: one group), sym, act_order, percdamp, block_size; v2 for the packing
(zeros stored as is) instead of the classic zero - 1. scales/zeros are [groups, rows]; err is
||W X^T - W^ X^T||^2 over the calibration tokens.
"""
import functools

import torch


def _one_thread(fn):
    """Runs fn on one torch thread: its many tiny ops only lose time to thread synchronisation."""

    @functools.wraps(fn)
    def wrapped(*args):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn(*args)
        finally:
            torch.set_num_threads(threads)

    return wrapped


def quant_params(x, bits, sym):
    """Per-row scale and zero of x [rows, n] (the range always holds 0)."""
    maxq = 2**bits - 1
    xmin = torch.clamp(x.min(dim=1).values, max=0.0)
    xmax = torch.clamp(x.max(dim=1).values, min=0.0)
    if sym:
        xmax = torch.maximum(xmin.abs(), xmax)
        xmin = torch.where(xmin < 0, -xmax, xmin)
    empty = (xmin == 0) & (xmax == 0)
    xmin = torch.where(empty, torch.full_like(xmin, -1.0), xmin)
    xmax = torch.where(empty, torch.full_like(xmax, 1.0), xmax)
    scale = (xmax - xmin) / maxq
    if sym:
        zero = torch.full_like(scale, float((maxq + 1) // 2))
    else:
        zero = torch.round(-xmin / scale)
    return scale, zero


def quant_levels(w, scale, zero, bits):
    """Levels of w [rows] (or [rows, n] with scale/zero [rows, 1]); torch.round is half-to-even."""
    return torch.clamp(torch.round(w / scale) + zero, 0, 2**bits - 1)


def _group_size(params, cols):
    g = int(params["group_size"])
    return cols if g == -1 else g


def _error(W, Wq, X):
    return torch.tensor([(((W - Wq) @ X.T) ** 2).sum().item()], dtype=torch.float64)


def _dequant(q, scales, zeros, g_idx):
    return scales.T[:, g_idx] * (q - zeros.T[:, g_idx])


@_one_thread
def rtn_quantize(inputs, params):
    W = inputs["W"]
    bits, sym = int(params["bits"]), bool(params["sym"])
    rows, cols = W.shape
    g = _group_size(params, cols)
    groups = (cols + g - 1) // g
    q = torch.zeros_like(W)
    scales = torch.zeros(groups, rows, dtype=torch.float64)
    zeros = torch.zeros(groups, rows, dtype=torch.float64)
    for k in range(groups):
        block = W[:, k * g:(k + 1) * g]
        scale, zero = quant_params(block, bits, sym)
        scales[k], zeros[k] = scale, zero
        q[:, k * g:(k + 1) * g] = quant_levels(block, scale[:, None], zero[:, None], bits)
    g_idx = torch.arange(cols) // g
    Wq = _dequant(q, scales, zeros, g_idx)
    return {"q": q, "scales": scales, "zeros": zeros, "g_idx": g_idx, "err": _error(W, Wq, inputs["X"])}


@_one_thread
def gptq_quantize(inputs, params):
    W0 = inputs["W"]
    X = inputs["X"]
    bits, sym = int(params["bits"]), bool(params["sym"])
    blocksize = int(params["block_size"])
    grouped = int(params["group_size"]) != -1
    rows, cols = W0.shape
    g = _group_size(params, cols)
    groups = (cols + g - 1) // g
    scales = torch.zeros(groups, rows, dtype=torch.float64)
    zeros = torch.zeros(groups, rows, dtype=torch.float64)

    W = W0.clone()
    H = 2.0 * X.T @ X / X.shape[0]
    if not grouped:
        scale, zero = quant_params(W, bits, sym)  # from the original weights
        scales[0], zeros[0] = scale, zero
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    if bool(params["act_order"]):
        perm = torch.argsort(torch.diag(H), descending=True, stable=True)
    else:
        perm = torch.arange(cols)
    W = W[:, perm]
    H = H[perm][:, perm]
    H = H + float(params["percdamp"]) * torch.diag(H).mean() * torch.eye(cols, dtype=torch.float64)
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)

    Q = torch.zeros_like(W)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2].clone()
        E1 = torch.zeros_like(W1)
        for i in range(i2 - i1):
            col = i1 + i
            if grouped and col % g == 0:
                # W has the updates of the earlier blocks only.
                scale, zero = quant_params(W[:, col:col + g], bits, sym)
                scales[col // g], zeros[col // g] = scale, zero
            w = W1[:, i]
            q = quant_levels(w, scale, zero, bits)
            Q[:, col] = q
            e = (w - scale * (q - zero)) / U[col, col]
            W1[:, i:] -= e[:, None] * U[col, col:i2][None, :]
            E1[:, i] = e
        W[:, i2:] -= E1 @ U[i1:i2, i2:]

    invperm = torch.argsort(perm)
    Q = Q[:, invperm]
    g_idx = (torch.arange(cols) // g)[invperm]
    Wq = _dequant(Q, scales, zeros, g_idx)
    return {"q": Q, "scales": scales, "zeros": zeros, "g_idx": g_idx, "err": _error(W0, Wq, X)}


# ---- Hugging Face GPTQ layout ---------------------------------------------------------------------


def _to_int32(u):
    """Unsigned 32-bit values (int64) as the signed int32 values a checkpoint holds."""
    return torch.where(u >= 2**31, u - 2**32, u)


# 3 bits: 32 values in 3 words, two of them across a word boundary (AutoGPTQ's layout):
#   word 0: values 0-9 at bits 3i, value 10's low 2 bits at bits 30-31
#   word 1: value 10's high bit at bit 0, values 11-20 at bits 3(i-11)+1, value 21's low bit at 31
#   word 2: value 21's high 2 bits at bits 0-1, values 22-31 at bits 3(i-22)+2
def _pack3(v):
    """v [..., 32k] values (int64) -> [..., 3k] words, packed along the last dim."""
    v = v.reshape(*v.shape[:-1], -1, 32)
    w0 = sum(v[..., i] << (3 * i) for i in range(10)) | ((v[..., 10] & 3) << 30)
    w1 = (v[..., 10] >> 2) | sum(v[..., i] << (3 * (i - 11) + 1) for i in range(11, 21)) | \
        ((v[..., 21] & 1) << 31)
    w2 = (v[..., 21] >> 1) | sum(v[..., i] << (3 * (i - 22) + 2) for i in range(22, 32))
    return torch.stack([w0, w1, w2], dim=-1).reshape(*v.shape[:-2], -1)


def _unpack3(w):
    """The inverse: [..., 3k] words -> [..., 32k] values."""
    w = w.reshape(*w.shape[:-1], -1, 3)
    w0, w1, w2 = w[..., 0], w[..., 1], w[..., 2]
    vals = [(w0 >> (3 * i)) & 7 for i in range(10)]
    vals.append(((w0 >> 30) & 3) | ((w1 & 1) << 2))
    vals += [(w1 >> (3 * (i - 11) + 1)) & 7 for i in range(11, 21)]
    vals.append(((w1 >> 31) & 1) | ((w2 & 3) << 1))
    vals += [(w2 >> (3 * (i - 22) + 2)) & 7 for i in range(22, 32)]
    return torch.stack(vals, dim=-1).reshape(*w.shape[:-2], -1)


def _pack_last(v, bits):
    """Values (int64, 0..2^bits-1) packed along the last dim into unsigned 32-bit words."""
    if bits == 3:
        return _pack3(v)
    per = 32 // bits
    shifts = torch.arange(per, dtype=torch.int64) * bits
    return (v.reshape(*v.shape[:-1], -1, per) << shifts).sum(dim=-1)


def _unpack_last(w, bits):
    if bits == 3:
        return _unpack3(w)
    per, mask = 32 // bits, 2**bits - 1
    shifts = torch.arange(per, dtype=torch.int64) * bits
    return ((w[..., None] >> shifts) & mask).reshape(*w.shape[:-1], -1)


def gptq_pack(inputs, params):
    bits = int(params["bits"])
    assert bits in (2, 3, 4, 8)
    mask = 2**bits - 1
    q = inputs["q"].to(torch.int64)  # [out, in]
    # qweight[r, o]: input rows of output o packed along dim 0, the first in the lowest bits.
    qweight = _pack_last(q, bits).T
    z = inputs["zeros"].to(torch.int64)  # [G, out]
    stored = z if bool(params["v2"]) else (z - 1) & mask
    qzeros = _pack_last(stored, bits)
    return {
        "qweight": _to_int32(qweight),
        "qzeros": _to_int32(qzeros),
        "scales": inputs["scales"].to(torch.float16).to(torch.float64),
        "g_idx": inputs["g_idx"],
    }


def gptq_unpack(inputs, params):
    bits = int(params["bits"])
    mask = 2**bits - 1
    q = _unpack_last((inputs["qweight"] & 0xFFFFFFFF).T, bits)  # [out, in]
    z = _unpack_last(inputs["qzeros"] & 0xFFFFFFFF, bits)
    if not bool(params["v2"]):
        z = (z + 1) & mask
    return {"q": q, "zeros": z, "scales": inputs["scales"], "g_idx": inputs["g_idx"]}


OPS = {
    "gptq_quantize": gptq_quantize,
    "rtn_quantize": rtn_quantize,
    "gptq_pack": gptq_pack,
    "gptq_unpack": gptq_unpack,
}
