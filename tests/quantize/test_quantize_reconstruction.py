"""GPTQ beats round-to-nearest where it matters, the layer outputs: on the trained dense model,
for 3 and 4 bits, every linear of every layer has a smaller ||W X - W^ X||^2 with the weights of
`origami quantize --method gptq` than with those of `--method rtn` (both read from their
--dequantized folders). X are each linear's inputs in the original fp32 model (transformers,
float64, forward hooks) over the calibration windows origami drew (same text, seed and sizes).
"""
import os
import unittest

import numpy as np
import torch

import quantize_lib as ql
from gptq_unpack import load_safetensors

SAMPLES, SEQ_LEN, SEED = 24, 64, 5
# bits: flags beyond --bits (3-bit with act-order for GPTQ, 4-bit without)
CASES = {3: ["--group-size", "32", "--act-order"], 4: ["--group-size", "32"]}


def input_gram(model_dir, windows):
    """{linear weight name: X^T X} of every nn.Linear in the decoder layers, in float64."""
    model = ql.load_hf(model_dir)
    grams, hooks = {}, []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and ".layers." in name:
            def hook(mod, inputs, output, key=name + ".weight"):
                x = inputs[0].reshape(-1, inputs[0].shape[-1]).to(torch.float64)
                grams[key] = grams.get(key, 0) + x.T @ x
            hooks.append(module.register_forward_hook(hook))
    with torch.no_grad():
        for w in windows:
            model(input_ids=torch.tensor([w]))
    for h in hooks:
        h.remove()
    return {k: v.numpy() for k, v in grams.items()}


def output_error(w, w_hat, gram):
    d = (w.astype(np.float64) - w_hat.astype(np.float64))
    return float(np.einsum("oi,ij,oj->", d, gram, d))


class Reconstruction(unittest.TestCase):
    def test_gptq_below_rtn(self):
        model = ql.model("dense")
        tokens = ql.byte_tokens(ql.CALIBRATION_FILE)
        grams = input_gram(model, ql.windows(tokens, SAMPLES, SEQ_LEN, SEED))
        original = load_safetensors(model)
        sizes = ["--samples", SAMPLES, "--seq-len", SEQ_LEN, "--seed", SEED]
        for bits, flags in CASES.items():
            with self.subTest(bits=bits), ql.TempDir() as tmp:
                deq = {}
                for method in ("gptq", "rtn"):
                    folder = os.path.join(tmp, method + "_deq")
                    own = flags if method == "gptq" else [f for f in flags if f != "--act-order"]
                    ql.quantize(model, os.path.join(tmp, method), "--method", method, "--bits",
                                bits, *own, *sizes, dequantized=folder,
                                calibration=ql.CALIBRATION_FILE if method == "gptq" else None)
                    deq[method] = load_safetensors(folder)
                worse = []
                print("%d-bit: ||W X - W^ X||^2, GPTQ / RTN per linear" % bits)
                for name in sorted(grams):
                    w = original[name]
                    eg = output_error(w, deq["gptq"][name], grams[name])
                    er = output_error(w, deq["rtn"][name], grams[name])
                    print("  %-45s %.4g / %.4g = %.3f" % (name, eg, er, eg / er))
                    if not eg < er:
                        worse.append(name)
                self.assertEqual(len(grams), 7 * ql.read_config(model)["num_hidden_layers"])
                self.assertEqual(worse, [], "%d-bit: GPTQ not below RTN" % bits)


if __name__ == "__main__":
    unittest.main(verbosity=2)
