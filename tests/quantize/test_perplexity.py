"""origami perplexity against transformers (float64) on the same windows of the same text.

A tiny random Llama (vocabulary 264: origami's byte tokenizer, ids = the text's bytes) saved by
transformers; `origami perplexity MODEL --tokenizer byte --text FILE --seq-len S` must give the
perplexity transformers computes over the same non-overlapping windows (each predicting its
tokens 2..S) within 1e-5 relative (f32 logits, log-sum-exp in double on both sides). With
--weights int8 the result must stay within 2% (round-to-nearest weights, int8 activations) and
differ from the dense one (the weights really are quantized). A GPTQ folder written by
`origami quantize` (4 bits, groups of 32, act-order) loads back with its packed kernels and, with
f32 activations, gives the perplexity of its --dequantized fp32 copy within 1e-5. Bad input exits
non-zero and names the problem.
"""
import math
import os
import subprocess
import sys
import tempfile

import torch
import transformers

BIN = os.environ.get("ORIGAMI_BIN", "build/bin/origami")
S = 32


def origami(*args, ok=True):
    p = subprocess.run([BIN, "perplexity", *args], capture_output=True, text=True,
                       env=dict(os.environ, OMP_NUM_THREADS="2"))
    if ok and p.returncode != 0:
        sys.exit("origami perplexity failed (%d):\n%s\n%s" % (p.returncode, p.stdout, p.stderr))
    return p


def value(p):
    return float(p.stdout.split()[1])


def main():
    tmp = tempfile.mkdtemp(prefix="origami_ppl_")
    torch.manual_seed(3)
    cfg = transformers.LlamaConfig(vocab_size=264, hidden_size=64, intermediate_size=96,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=64,
                                   initializer_range=0.05, tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(cfg).float()
    model.save_pretrained(os.path.join(tmp, "model"), safe_serialization=True)
    text = ("It is a truth universally acknowledged, that a single man in possession of a good "
            "fortune, must be in want of a wife. ") * 5
    with open(os.path.join(tmp, "text.txt"), "w") as f:
        f.write(text)
    ids = list(text.encode())
    windows = len(ids) // S
    model = model.double().eval()
    torch.set_default_dtype(torch.float64)
    nll, n = 0.0, 0
    with torch.no_grad():
        for w in range(windows):
            x = torch.tensor([ids[w * S:(w + 1) * S]])
            logp = torch.log_softmax(model(input_ids=x).logits[0], dim=-1)
            for t in range(S - 1):
                nll -= float(logp[t, ids[w * S + t + 1]])
                n += 1
    want = math.exp(nll / n)
    common = [os.path.join(tmp, "model"), "--tokenizer", "byte", "--text",
              os.path.join(tmp, "text.txt"), "--seq-len", str(S), "--batch", "3"]
    got = value(origami(*common))
    print("perplexity: origami %.6f, transformers %.6f (%d windows of %d)" % (got, want, windows, S))
    assert abs(got - want) <= 1e-5 * want, (got, want)
    q = value(origami(*common, "--weights", "int8"))
    print("perplexity int8: %.6f" % q)
    assert abs(q - want) <= 0.02 * want and q != got, (q, want)
    # origami quantize -> GPTQ folder -> packed kernels, against the dequantized dense copy.
    qdir, ddir = os.path.join(tmp, "gptq"), os.path.join(tmp, "dequantized")
    run = subprocess.run([BIN, "quantize", os.path.join(tmp, "model"), qdir, "--tokenizer", "byte",
                          "--bits", "4", "--group-size", "32", "--act-order", "--calibration",
                          os.path.join(tmp, "text.txt"), "--samples", "8", "--seq-len", str(S),
                          "--dtype", "f32", "--dequantized", ddir],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    rest = common[1:]
    packed = value(origami(qdir, *rest, "--exact-activations"))
    dense = value(origami(ddir, *rest))
    print("perplexity GPTQ 4-bit: packed %.6f, dequantized dense %.6f" % (packed, dense))
    assert abs(packed - dense) <= 1e-5 * dense, (packed, dense)
    p = origami(*common[:3], "--text", os.path.join(tmp, "missing.txt"), ok=False)
    assert p.returncode != 0 and "missing.txt" in p.stderr, p.stderr
    p = origami(*common, "--weights", "int3", ok=False)
    assert p.returncode != 0 and "int3" in p.stderr, p.stderr
    print("ok")


if __name__ == "__main__":
    main()
