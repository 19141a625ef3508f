"""PyTorch references of the GEMM family (ops/gemm.h), in float64, gradients by autograd."""
import torch


def _op(t, trans):
    return t.transpose(-1, -2) if trans else t


def gemm(inputs, params):
    """out = alpha * op(a) @ op(b) + beta * c; da, db are the gradients of sum(out * dout)."""
    a = inputs["a"].clone().requires_grad_(True)
    b = inputs["b"].clone().requires_grad_(True)
    out = params.get("alpha", 1.0) * (_op(a, params.get("trans_a", False)) @
                                      _op(b, params.get("trans_b", False)))
    if "c" in inputs:
        out = out + params.get("beta", 0.0) * inputs["c"]
    result = {"out": out.detach()}
    if "dout" in inputs:
        da, db = torch.autograd.grad(out, (a, b), inputs["dout"])
        result.update(da=da, db=db)
    return result


def grouped_gemm(inputs, params):
    """Per group g: out[rows of g] = alpha * x[rows of g] @ op(w[g]) + beta * c[rows of g];
    dx, dw are the gradients of sum(out * dout)."""
    x = inputs["x"].clone().requires_grad_(True)
    w = inputs["w"].clone().requires_grad_(True)
    rows = [int(r) for r in inputs["group_rows"].tolist()]
    trans_w = params.get("trans_w", False)
    alpha, beta = params.get("alpha", 1.0), params.get("beta", 0.0)
    pieces = []
    for g, x_g in enumerate(torch.split(x, rows, dim=0)):
        pieces.append(alpha * (x_g @ _op(w[g], trans_w)))
    out = torch.cat(pieces, dim=0) if pieces else x.new_zeros(0, w.shape[1 if trans_w else 2])
    if "c" in inputs:
        out = out + beta * inputs["c"]
    result = {"out": out.detach()}
    if "dout" in inputs:
        dx, dw = torch.autograd.grad(out, (x, w), inputs["dout"], allow_unused=True)
        result.update(dx=dx if dx is not None else torch.zeros_like(x),
                      dw=dw if dw is not None else torch.zeros_like(w))
    return result


OPS = {
    "gemm": gemm,  # 2-D and batched (3-D) alike
    "grouped_gemm": grouped_gemm,
}
