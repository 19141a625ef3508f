#!/usr/bin/env python3
"""PyTorch reference for the op tests.

Usage: torch_ops.py DIR

DIR/manifest.json lists cases {name, op, params, inputs: {name: file.npy}}. Each op is a function
in the OPS table of a tests/golden/ref_*.py module: it takes a dict of float64 (or int64) torch
tensors and the params dict and returns a dict of output tensors (gradients by autograd). Outputs
are written as DIR/<case>.<output>.npy (float64) and listed in DIR/outputs.txt as
"case/output file" lines.
"""
import importlib
import json
import os
import pathlib
import sys

import numpy as np
import torch

HERE = pathlib.Path(__file__).resolve().parent


def load_ops():
    ops = {}
    sys.path.insert(0, str(HERE))
    for path in sorted(HERE.glob("ref_*.py")):
        mod = importlib.import_module(path.stem)
        for name, fn in mod.OPS.items():
            if name in ops:
                raise SystemExit(f"op {name} defined twice (in {path.name})")
            ops[name] = fn
    return ops


def main():
    out_dir = pathlib.Path(sys.argv[1])
    manifest = json.loads((out_dir / "manifest.json").read_text())
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    ops = load_ops()
    lines = []
    for case in manifest["cases"]:
        op = case["op"]
        if op not in ops:
            raise SystemExit(f"case {case['name']}: no reference for op '{op}' (known: {sorted(ops)})")
        inputs = {}
        for key, file in case["inputs"].items():
            arr = np.load(out_dir / file)
            t = torch.from_numpy(arr)
            inputs[key] = t.to(torch.float64) if t.is_floating_point() else t.to(torch.int64)
        outputs = ops[op](inputs, case["params"])
        for key, t in outputs.items():
            file = f"{case['name']}.{key}.npy"
            np.save(out_dir / file, t.detach().to(torch.float64).contiguous().numpy())
            lines.append(f"{case['name']}/{key} {file}")
    (out_dir / "outputs.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
