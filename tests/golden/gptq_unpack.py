"""An unpacker of Hugging Face GPTQ checkpoints (AutoGPTQ / Optimum layout), written from the
format's description (docs/quantization.md, REFERENCE.md section 11), independent of origami and
of ref_gptq.py's packer:

  NAME.qweight  int32 [in * bits / 32, out]   levels; along dim 0 the words of each output column
                                              form one little-endian bit stream: value i of the
                                              column sits at bits [bits*i, bits*i + bits)
  NAME.qzeros   int32 [groups, out * bits / 32]  zero points, the same bit stream along dim 1;
                                              checkpoint_format "gptq" stores zero - 1 (mod 2^bits),
                                              "gptq_v2" stores zero
  NAME.scales   fp16  [groups, out]
  NAME.g_idx    int32 [in]                    group of each input column
  W^[o, i] = scales[g_idx[i], o] * (q[i, o] - zero[g_idx[i], o])

For 2, 4 and 8 bits the stream holds 32/bits whole values per word; for 3 bits values cross word
boundaries (32 values in 3 words). Here the words are expanded to their bits with numpy and the
values read off the stream, whatever the width.
"""
import json
import os

import numpy as np


def unpack_stream(words, bits, count, axis):
    """Values [count, ...] (axis 0) or [..., count] (axis 1) from int32 words packed along `axis`."""
    w = np.ascontiguousarray(np.moveaxis(np.asarray(words), axis, -1)).astype("<i4")
    lead = w.shape[:-1]
    # Each word's 4 bytes (little-endian), then each byte's 8 bits, lowest first.
    b = w.view(np.uint8).reshape(*lead, w.shape[-1] * 4)
    stream = np.unpackbits(b, axis=-1, bitorder="little")  # [..., words * 32]
    assert stream.shape[-1] >= count * bits, "too few words for %d %d-bit values" % (count, bits)
    vals = stream[..., : count * bits].reshape(*lead, count, bits).astype(np.int64)
    out = (vals << np.arange(bits, dtype=np.int64)).sum(axis=-1)
    return np.moveaxis(out, -1, axis)


def unpack_linear(tensors, name, bits, checkpoint_format="gptq"):
    """q [in, out], zeros [groups, out], scales [groups, out] float32, g_idx [in] of linear NAME."""
    qweight = tensors[name + ".qweight"]
    qzeros = tensors[name + ".qzeros"]
    scales = np.asarray(tensors[name + ".scales"])
    g_idx = np.asarray(tensors[name + ".g_idx"]).astype(np.int64)
    assert qweight.dtype == np.int32 and qzeros.dtype == np.int32, name + ": packed dtypes"
    assert scales.dtype == np.float16, name + ".scales is %s, expected float16" % scales.dtype
    groups, out = scales.shape
    in_f = qweight.shape[0] * 32 // bits
    assert qweight.shape == (in_f * bits // 32, out), name + ".qweight shape"
    assert qzeros.shape == (groups, out * bits // 32), name + ".qzeros shape"
    assert g_idx.shape == (in_f,), name + ".g_idx shape"
    q = unpack_stream(qweight, bits, in_f, axis=0)
    zeros = unpack_stream(qzeros, bits, out, axis=1)
    if checkpoint_format != "gptq_v2":
        zeros = (zeros + 1) & (2**bits - 1)
    return q, zeros, scales.astype(np.float32), g_idx


def dequantize(q, zeros, scales, g_idx):
    """W^ [out, in] float32: scale * (q - zero), one float32 multiply as the checkpoint defines."""
    z = zeros[g_idx]  # [in, out]
    s = scales[g_idx]
    return (s * (q - z).astype(np.float32)).T.astype(np.float32)


def load_safetensors(folder):
    """Every tensor of a folder's model.safetensors (or its shards) as numpy arrays."""
    from safetensors.numpy import load_file
    index = os.path.join(folder, "model.safetensors.index.json")
    files = ["model.safetensors"]
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    out = {}
    for name in files:
        out.update(load_file(os.path.join(folder, name)))
    return out


def load_gptq_folder(folder):
    """(quantization_config, {NAME: (q, zeros, scales, g_idx)}, {other tensor name: array})."""
    with open(os.path.join(folder, "config.json")) as f:
        qc = json.load(f)["quantization_config"]
    assert qc["quant_method"] == "gptq", qc
    tensors = load_safetensors(folder)
    names = sorted(n[: -len(".qweight")] for n in tensors if n.endswith(".qweight"))
    fmt = qc.get("checkpoint_format", "gptq")
    linears = {n: unpack_linear(tensors, n, int(qc["bits"]), fmt) for n in names}
    packed = {n + s for n in names for s in (".qweight", ".qzeros", ".scales", ".g_idx")}
    others = {k: v for k, v in tensors.items() if k not in packed}
    return qc, linears, others
