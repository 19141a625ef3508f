"""PyTorch references (float64, autograd) for cross-entropy, row gather / scatter-add, AdamW and
gradient-norm clipping.

Each op takes float64 / int64 tensors and a params dict; gradients come from autograd with the
upstream gradient passed in as an input ("dout") or, for cross-entropy, as a scalar grad_scale
(the backward of sum(loss) * grad_scale).
"""
import torch
import torch.nn.functional as F


def cross_entropy(inputs, params):
    logits = inputs["logits"].clone().requires_grad_(True)
    targets = inputs["targets"]
    ignore_index = int(params["ignore_index"])
    loss = F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction="none")
    lse = torch.logsumexp(logits, dim=-1)
    (dlogits,) = torch.autograd.grad(loss.sum() * float(params["grad_scale"]), [logits])
    return {"loss": loss, "lse": lse, "dlogits": dlogits}


def gather_rows(inputs, params):
    src = inputs["src"].clone().requires_grad_(True)
    out = src[inputs["idx"]]
    (dsrc,) = torch.autograd.grad(out, [src], grad_outputs=inputs["dout"])
    return {"out": out, "dsrc": dsrc}


def scatter_add_rows(inputs, params):
    """out = base + sum_i weight[i] * src[i] into row idx[i]; gradients of sum(out * dout)."""
    src = inputs["src"].clone().requires_grad_(True)
    weight = inputs["weight"].clone().requires_grad_(True)
    out = inputs["base"].index_add(0, inputs["idx"], src * weight[:, None])
    dsrc, dweight = torch.autograd.grad(out, [src, weight], grad_outputs=inputs["dout"])
    return {"out": out, "dsrc": dsrc, "dweight": dweight}


def adamw(inputs, params):
    """torch.optim.AdamW for params["steps"] steps; the gradient of step k is inputs["g<k>"]
    times params["grad_scale"]."""
    p = torch.nn.Parameter(inputs["param"].clone())
    opt = torch.optim.AdamW(
        [p],
        lr=float(params["lr"]),
        betas=(float(params["beta1"]), float(params["beta2"])),
        eps=float(params["eps"]),
        weight_decay=float(params["weight_decay"]),
        foreach=False,
    )
    for k in range(int(params["steps"])):
        p.grad = inputs[f"g{k}"] * float(params["grad_scale"])
        opt.step()
    state = opt.state[p]
    return {"param": p.detach(), "m": state["exp_avg"], "v": state["exp_avg_sq"]}


def clip_grad_norm(inputs, params):
    """torch.nn.utils.clip_grad_norm_ over the tensors g0, g1, ...: the clipped gradients and the
    total norm before clipping."""
    names = sorted((k for k in inputs if k.startswith("g")), key=lambda k: int(k[1:]))
    ps = []
    for name in names:
        p = torch.nn.Parameter(torch.zeros_like(inputs[name]))
        p.grad = inputs[name].clone()
        ps.append(p)
    norm = torch.nn.utils.clip_grad_norm_(ps, max_norm=float(params["max_norm"]))
    out = {name: p.grad for name, p in zip(names, ps)}
    out["norm"] = norm.reshape(1)
    return out


OPS = {
    "cross_entropy": cross_entropy,
    "gather_rows": gather_rows,
    "scatter_add_rows": scatter_add_rows,
    "adamw": adamw,
    "clip_grad_norm": clip_grad_norm,
}
