"""A GPTQ checkpoint written by Python, for the loader of quantized models.

Usage: hf_gptq_model.py OUT_DIR CASE [CASE ...]
CASE: FAMILY-BITS-GROUP[-act][-sym][-v2], FAMILY llama or mixtral, e.g. llama-4-32-act.

For every case it builds a tiny random Hugging Face model (float32), quantizes every linear layer
of its decoder layers (attention q/k/v/o, the MLP or each expert's w1/w2/w3; not the router,
embedding or lm_head) with the PyTorch GPTQ reference (tests/golden/ref_gptq.py, random
calibration inputs), packs them in the Hugging Face GPTQ layout with the reference packer, and
writes into OUT_DIR/CASE/model: config.json with quantization_config and model.safetensors
(NAME.qweight / qzeros int32, scales fp16, g_idx int32; everything else float32). It then puts the
dequantized weights (fp16 scales) into the model and writes, computed in float64:
  ids.npy      [2,S] int64
  logits.npy   [2,S,V] the logits of the dequantized model
and OUT_DIR/CASE/status.txt: "ok".
"""

import json
import os
import sys

import numpy as np
import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ref_gptq  # noqa: E402  (same folder)

S, V = 9, 96


def build(family):
    import transformers
    common = dict(vocab_size=V, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                  rms_norm_eps=1e-6, initializer_range=0.1, max_position_embeddings=64,
                  num_hidden_layers=2, intermediate_size=96, tie_word_embeddings=False)
    if family == "llama":
        return transformers.LlamaForCausalLM(transformers.LlamaConfig(**common))
    if family == "mixtral":
        return transformers.MixtralForCausalLM(transformers.MixtralConfig(
            **common, num_local_experts=4, num_experts_per_tok=2, sliding_window=None))
    raise ValueError(family)


def linear_names(model):
    return [n for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and ".layers." in n and not n.endswith(".gate")]


def run(out_dir, case):
    parts = case.split("-")
    family, bits, group = parts[0], int(parts[1]), int(parts[2])
    act, sym, v2 = "act" in parts, "sym" in parts, "v2" in parts
    root = os.path.join(out_dir, case)
    os.makedirs(os.path.join(root, "model"), exist_ok=True)
    torch.manual_seed(1234)
    model = build(family).float().eval()
    params = dict(bits=bits, group_size=group, sym=sym, act_order=act, percdamp=0.01,
                  block_size=32, v2=v2)
    tensors = {}
    modules = dict(model.named_modules())
    g = torch.Generator().manual_seed(5)
    for name in linear_names(model):
        lin = modules[name]
        W = lin.weight.detach().double()
        X = torch.randn(64, W.shape[1], generator=g, dtype=torch.float64)
        X[:, :3] *= 4.0  # a few dominant inputs, so act-order permutes the columns
        res = ref_gptq.gptq_quantize({"W": W, "X": X}, params)
        packed = ref_gptq.gptq_pack({"q": res["q"], "zeros": res["zeros"],
                                     "scales": res["scales"], "g_idx": res["g_idx"]}, params)
        tensors[name + ".qweight"] = packed["qweight"].to(torch.int32).contiguous()
        tensors[name + ".qzeros"] = packed["qzeros"].to(torch.int32).contiguous()
        tensors[name + ".scales"] = packed["scales"].to(torch.float16).contiguous()
        tensors[name + ".g_idx"] = packed["g_idx"].to(torch.int32).contiguous()
        # The weights a loader must see: fp16 scales times (level - zero).
        scales = packed["scales"].double()
        gi = res["g_idx"].long()
        deq = scales[gi, torch.arange(W.shape[0])[:, None]] * (
            res["q"].double() - res["zeros"].double()[gi, torch.arange(W.shape[0])[:, None]])
        with torch.no_grad():
            lin.weight.copy_(deq.float())
        lin.deq = deq
    quantized = set(linear_names(model))
    for n, p in model.state_dict().items():
        if n.endswith(".weight") and n[: -len(".weight")] in quantized:
            continue
        if n.endswith("rotary_emb.inv_freq"):
            continue
        tensors[n] = p.detach().float().contiguous()
    save_file(tensors, os.path.join(root, "model", "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config["quantization_config"] = {
        "quant_method": "gptq", "bits": bits, "group_size": group, "desc_act": act, "sym": sym,
        "damp_percent": 0.01, "checkpoint_format": "gptq_v2" if v2 else "gptq"}
    config["torch_dtype"] = "float32"
    config["architectures"] = [type(model).__name__]
    with open(os.path.join(root, "model", "config.json"), "w") as f:
        json.dump(config, f, indent=2)

    model = model.double()
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name in quantized:
            modules[name].weight.copy_(modules[name].deq)
    ids = torch.randint(0, V, (2, S), generator=g)
    torch.set_default_dtype(torch.float64)
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    torch.set_default_dtype(torch.float32)
    np.save(os.path.join(root, "ids.npy"), ids.numpy())
    np.save(os.path.join(root, "logits.npy"), logits.numpy())
    with open(os.path.join(root, "status.txt"), "w") as f:
        f.write("ok\n")


def main():
    if len(sys.argv) < 3:
        print(__doc__)
        return 2
    torch.set_num_threads(2)
    for case in sys.argv[2:]:
        run(sys.argv[1], case)
    return 0


if __name__ == "__main__":
    sys.exit(main())
