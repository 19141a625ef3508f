"""Support of the `origami quantize` tests: the small trained models they quantize (built once per
build tree by train_models.py, the ctest fixture), running the command, and the byte tokenizer
and the calibration windows on the Python side.

Every reference comes from transformers, numpy or tests/golden/gptq_unpack.py (an unpacker
written from the format's description), never from origami.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(HERE, "..", "golden"))
import gptq_unpack  # noqa: E402,F401  (tests/golden)

# A file of the text the demo models trained on, and its folder (text files without extension).
CALIBRATION_FILE = "/usr/share/games/fortunes/computers"
CALIBRATION_DIR = "/usr/share/games/fortunes"
BYTE_EOS = 257


def origami():
    return os.environ.get("ORIGAMI_BIN", os.path.join(SOURCE, "build", "bin", "origami"))


def models_dir():
    return os.environ.get("ORIGAMI_QUANTIZE_MODELS", os.path.join(SOURCE, "build", "quantize_models"))


def model(name):
    """The Hugging Face folder of a trained model ("dense" or "moe"); train_models.py made it."""
    folder = os.path.join(models_dir(), name)
    if not os.path.exists(os.path.join(folder, "done")):
        raise SystemExit("no trained model in %s: run tests/quantize/train_models.py first (the "
                         "ctest fixture quantize.models does)" % folder)
    return folder


def env():
    e = dict(os.environ)
    e.setdefault("OMP_NUM_THREADS", "2")
    return e


def run(args, expect_ok=True, timeout=600):
    """Runs `origami ARGS`; returns (returncode, stdout, stderr). Prints the output."""
    cmd = [origami()] + [str(a) for a in args]
    print("$ " + " ".join(cmd), flush=True)
    p = subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=timeout)
    sys.stdout.write(p.stdout)
    sys.stdout.write(p.stderr)
    sys.stdout.flush()
    if expect_ok and p.returncode != 0:
        raise AssertionError("origami %s exited %d:\n%s" % (args[0], p.returncode, p.stderr))
    return p.returncode, p.stdout, p.stderr


def quantize(model_dir, out, *flags, dequantized=None, calibration=CALIBRATION_FILE):
    """origami quantize MODEL OUT --tokenizer byte [--calibration] FLAGS; returns its stdout."""
    args = ["quantize", model_dir, out, "--tokenizer", "byte"]
    if calibration:
        args += ["--calibration", calibration]
    if dequantized:
        args += ["--dequantized", dequantized]
    return run(args + list(flags))[1]


def fallback_experts(stdout):
    """(layer, name) of the expert weights the progress says fell back to RTN, e.g.
    (1, "block_sparse_moe.experts.2.w1")."""
    found, layer = [], None
    for line in stdout.splitlines():
        m = re.match(r"layer (\d+)/\d+ ", line)
        if m:
            layer = int(m.group(1)) - 1
        elif "RTN fallback" in line:
            found += [(layer, n) for n in line.split(":", 1)[1].split()]
    return found


def byte_tokens(path):
    """origami's byte tokenizer over a text file: its bytes, then EOS (as TokenStream)."""
    with open(path, "rb") as f:
        return list(f.read()) + [BYTE_EOS]


class SplitMix64:
    """runtime/data.h SplitMix64 (a published generator), for origami's window positions."""

    def __init__(self, seed):
        self.state = seed

    def next(self):
        m = (1 << 64) - 1
        self.state = (self.state + 0x9E3779B97F4A7C15) & m
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
        return z ^ (z >> 31)


def windows(tokens, samples, seq_len, seed):
    """Random windows of seq_len tokens: start = SplitMix64(seed) mod (n - seq_len + 1)."""
    rng = SplitMix64(seed)
    out = []
    for _ in range(samples):
        start = rng.next() % (len(tokens) - seq_len + 1)
        out.append(tokens[start:start + seq_len])
    return out


def load_hf(folder):
    """transformers' model of a folder, in float64, eager attention. Sets torch's default dtype
    to float64 (the masks transformers builds follow it; float64 minima overflow float32)."""
    import torch
    from transformers import AutoModelForCausalLM
    torch.set_default_dtype(torch.float64)
    m = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float64,
                                             attn_implementation="eager")
    m.eval()
    return m


class TempDir:
    def __enter__(self):
        self.path = tempfile.mkdtemp(prefix="origami_quantize_")
        return self.path

    def __exit__(self, *exc):
        shutil.rmtree(self.path, ignore_errors=True)


def read_config(folder):
    with open(os.path.join(folder, "config.json")) as f:
        return json.load(f)
