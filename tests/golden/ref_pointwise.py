"""PyTorch references (float64, autograd) for embedding, RMSNorm, RoPE, SwiGLU, softmax and top-k.

Each op takes float64 / int64 tensors and a params dict; gradients come from autograd with the
upstream gradient passed in as an input ("dout", "dy", "dvalues").
"""
import math

import torch
import torch.nn.functional as F


def _grads(output, upstream, wrt):
    """Gradients of sum(output * upstream) with respect to the tensors in wrt."""
    return torch.autograd.grad(output, wrt, grad_outputs=upstream)


def embedding(inputs, params):
    weight = inputs["weight"].clone().requires_grad_(True)
    ids = inputs["ids"]
    offset = int(params.get("vocab_offset", 0))
    V = weight.shape[0]
    local = ids - offset
    inside = (local >= 0) & (local < V)
    out = F.embedding(torch.where(inside, local, torch.zeros_like(local)), weight)
    out = out * inside[:, None].to(out.dtype)
    (dweight,) = _grads(out, inputs["dout"], [weight])
    return {"out": out, "dweight": dweight}


def rmsnorm(inputs, params):
    x = inputs["x"].clone().requires_grad_(True)
    w = inputs["w"].clone().requires_grad_(True)
    eps = float(params["eps"])
    rstd = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    out = x * rstd * w
    dx, dw = _grads(out, inputs["dout"], [x, w])
    return {"out": out, "rstd": rstd[:, 0], "dx": dx, "dw": dw}


def _rope_inv_freq(params):
    """transformers' default RoPE parameters and _compute_llama3_parameters, in float64."""
    dim = int(params["head_dim"])
    base = float(params["theta"])
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).double() / dim))
    factor = float(params.get("llama3_factor", 0.0))
    if factor <= 0:
        return inv_freq
    low_freq_factor = float(params["llama3_low_freq_factor"])
    high_freq_factor = float(params["llama3_high_freq_factor"])
    old_context_len = float(params["llama3_original_max_position"])
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    # wavelen < high_freq_wavelen: do nothing; wavelen > low_freq_wavelen: divide by factor
    inv_freq_llama = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    # otherwise: interpolate between the two, using a smooth factor
    smooth_factor = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed_inv_freq = (1 - smooth_factor) * inv_freq_llama / factor + smooth_factor * inv_freq_llama
    is_medium_freq = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium_freq, smoothed_inv_freq, inv_freq_llama)


def rope_inv_freq(inputs, params):
    return {"inv_freq": _rope_inv_freq(params)}


def _rotate_half(x):
    try:
        from transformers.models.llama.modeling_llama import rotate_half
    except ImportError:  # the same function, restated
        def rotate_half(x):
            x1 = x[..., : x.shape[-1] // 2]
            x2 = x[..., x.shape[-1] // 2 :]
            return torch.cat((-x2, x1), dim=-1)
    return rotate_half(x)


def rope(inputs, params):
    """x [T,H,D] rotated as LlamaRotaryEmbedding + apply_rotary_pos_emb do it: the angles are the
    float32 product position * inv_freq (inv_freq stored as float32), the rest in float64."""
    x = inputs["x"].clone().requires_grad_(True)
    inv_freq = _rope_inv_freq(params).float()
    freqs = (inputs["positions"].float()[:, None] * inv_freq[None, :]).double()  # [T, D/2]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos()[:, None, :], emb.sin()[:, None, :]  # [T, 1, D]: unsqueeze_dim=1
    out = x * cos + _rotate_half(x) * sin
    (dx,) = _grads(out, inputs["dout"], [x])
    return {"out": out, "dx": dx}


def swiglu(inputs, params):
    gate = inputs["gate"].clone().requires_grad_(True)
    up = inputs["up"].clone().requires_grad_(True)
    wrt = [gate, up]
    out = F.silu(gate) * up
    if "row_scale" in inputs:
        scale = inputs["row_scale"].clone().requires_grad_(True)
        wrt.append(scale)
        out = out * scale[:, None]
    grads = _grads(out, inputs["dout"], wrt)
    result = {"out": out, "dgate": grads[0], "dup": grads[1]}
    if len(grads) > 2:
        result["drow_scale"] = grads[2]
    return result


def softmax(inputs, params):
    x = inputs["x"].clone().requires_grad_(True)
    out = torch.softmax(x, dim=-1)
    (dx,) = _grads(out, inputs["dy"], [x])
    return {"out": out, "dx": dx}


def topk(inputs, params):
    x = inputs["x"].clone().requires_grad_(True)
    values, indices = torch.topk(x, int(params["k"]), dim=-1, largest=True, sorted=True)
    (dx,) = _grads(values, inputs["dvalues"], [x])
    return {"values": values, "indices": indices, "dx": dx}


OPS = {
    "embedding": embedding,
    "rmsnorm": rmsnorm,
    "rope_inv_freq": rope_inv_freq,
    "rope": rope,
    "swiglu": swiglu,
    "softmax": softmax,
    "topk": topk,
}
