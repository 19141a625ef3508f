"""Safetensors files from and for the reference implementation (the Python `safetensors` package),
used by tests/unit/test_safetensors.cpp. Several commands may follow one another in one run
(`verify A write B`), to pay for importing torch once.

  make_safetensors.py write DIR    writes DIR/ref.safetensors with safetensors.torch (every dtype
                                   origami reads), a sharded checkpoint DIR/sharded/ with
                                   huggingface_hub.save_torch_state_dict, each tensor's values as
                                   DIR/npy/<i>.npy (float64 or int64) and DIR/manifest.json:
                                   {"files": [{"path", "metadata", "tensors": {name: {"npy",
                                   "dtype", "shape"}}}]}.
  make_safetensors.py verify DIR   reads DIR/manifest.json written by the C++ test (same form, plus
                                   "kind": "file" | "numpy" | "sharded") and checks that the files
                                   it lists load in safetensors (safe_open, safetensors.numpy) with
                                   the listed dtypes, shapes, values and metadata, and that a single
                                   file is byte-identical to what safetensors.torch.save writes for
                                   the same tensors. Exits 1 with the reasons on any mismatch.
  make_safetensors.py corpus DIR   regenerates the fuzzing seed corpus (tests/fuzz/corpus): valid_*
                                   files written by the library and bad_* files that a reader must
                                   refuse.
"""
import json
import os
import struct
import sys

import numpy as np

DTYPES = ["F32", "BF16", "F16", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL"]


def torch_dtypes():
    import torch

    return {
        "F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16,
        "F64": torch.float64, "I64": torch.int64, "I32": torch.int32, "I16": torch.int16,
        "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
    }


def make_tensor(torch, dtype_name, shape, gen):
    dt = torch_dtypes()[dtype_name]
    if dtype_name == "BOOL":
        return torch.randint(0, 2, shape, generator=gen).to(dt)
    if dtype_name == "U8":
        return torch.randint(0, 256, shape, generator=gen).to(dt)
    if dtype_name.startswith("I"):
        bits = int(dtype_name[1:])
        hi = 2 ** min(bits - 1, 40)
        return torch.randint(-hi, hi, shape, generator=gen).to(dt)
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * 3).to(dt)


def as_numpy_reference(t):
    """float64 for float dtypes, int64 for the rest (bool as 0/1)."""
    import torch

    if t.dtype.is_floating_point:
        return t.to(torch.float64).numpy()
    return t.to(torch.int64).numpy()


def cmd_write(out):
    import torch
    from huggingface_hub import save_torch_state_dict
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(1234)
    shapes = [[], [1], [3], [17], [2, 3], [0], [3, 0, 2], [1, 130], [2, 1, 3, 1]]
    tensors = {}
    for i, dt in enumerate(DTYPES):
        for j in range(3):  # three shapes per dtype, cycling through the odd ones
            shape = shapes[(i + 4 * j) % len(shapes)]
            tensors[f"layers.{i}.{dt.lower()}_{j}"] = make_tensor(torch, dt, shape, gen)
    tensors["naïve \"quoted\"\tname"] = make_tensor(torch, "F32", [2], gen)
    metadata = {"format": "pt", "origami": "golden ✓"}

    os.makedirs(os.path.join(out, "npy"), exist_ok=True)
    counter = [0]

    def describe(ts):
        entries = {}
        for name, t in ts.items():
            npy = f"npy/{counter[0]}.npy"
            counter[0] += 1
            np.save(os.path.join(out, npy), as_numpy_reference(t))
            dt = {v: k for k, v in torch_dtypes().items()}[t.dtype]
            entries[name] = {"npy": npy, "dtype": dt, "shape": list(t.shape)}
        return entries

    save_file(tensors, os.path.join(out, "ref.safetensors"), metadata=metadata)
    files = [{"path": "ref.safetensors", "metadata": metadata, "tensors": describe(tensors)}]

    sharded = {f"model.layers.{i}.weight": make_tensor(torch, "BF16", [5 + i, 7], gen)
               for i in range(5)}
    sharded["model.embed.weight"] = make_tensor(torch, "F32", [11, 3], gen)
    os.makedirs(os.path.join(out, "sharded"), exist_ok=True)
    save_torch_state_dict(sharded, os.path.join(out, "sharded"), max_shard_size=200)
    files.append({"path": "sharded", "metadata": {"format": "pt"}, "tensors": describe(sharded)})

    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump({"files": files}, f, ensure_ascii=False, indent=1)


def check_tensor(errors, where, name, t, spec, base):
    """Compares tensor `t` (torch or numpy) with its manifest entry."""
    import torch

    if isinstance(t, np.ndarray):
        t = torch.from_numpy(t)
    dt = {v: k for k, v in torch_dtypes().items()}[t.dtype]
    if dt != spec["dtype"]:
        errors.append(f"{where}: {name!r} has dtype {dt}, expected {spec['dtype']}")
        return
    if list(t.shape) != spec["shape"]:
        errors.append(f"{where}: {name!r} has shape {list(t.shape)}, expected {spec['shape']}")
        return
    expected = np.load(os.path.join(base, spec["npy"]))
    actual = as_numpy_reference(t)
    if expected.shape != actual.shape or not np.array_equal(
            expected.astype(actual.dtype), actual):
        errors.append(f"{where}: {name!r} values differ from {spec['npy']}")


def cmd_verify(base):
    import torch
    import safetensors.numpy
    import safetensors.torch
    from safetensors import safe_open

    with open(os.path.join(base, "manifest.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    errors = []
    for entry in manifest["files"]:
        path = os.path.join(base, entry["path"])
        specs = entry["tensors"]
        meta = entry.get("metadata") or None
        if entry["kind"] == "sharded":
            with open(os.path.join(path, "model.safetensors.index.json")) as f:
                index = json.load(f)
            weight_map = index["weight_map"]
            if set(weight_map) != set(specs):
                errors.append(f"{path}: weight_map names {sorted(weight_map)} != {sorted(specs)}")
            total = 0
            for shard in sorted(set(weight_map.values())):
                with safe_open(os.path.join(path, shard), framework="pt") as f:
                    if f.metadata() != meta:
                        errors.append(f"{path}/{shard}: metadata {f.metadata()} != {meta}")
                    for name in f.keys():
                        if weight_map.get(name) != shard:
                            errors.append(f"{path}/{shard}: holds {name!r}, index says "
                                          f"{weight_map.get(name)}")
                        t = f.get_tensor(name)
                        total += t.numel() * t.element_size()
                        check_tensor(errors, f"{path}/{shard}", name, t, specs[name], base)
            if index.get("metadata", {}).get("total_size") != total:
                errors.append(f"{path}: total_size {index.get('metadata')} != {total}")
            continue

        if entry["kind"] == "numpy":
            loaded = safetensors.numpy.load_file(path)
            if set(loaded) != set(specs):
                errors.append(f"{path}: names {sorted(loaded)} != {sorted(specs)}")
            for name, arr in loaded.items():
                if name in specs:
                    check_tensor(errors, path, name, arr, specs[name], base)
        with safe_open(path, framework="pt") as f:
            if f.metadata() != meta:
                errors.append(f"{path}: metadata {f.metadata()} != {meta}")
            loaded = {name: f.get_tensor(name) for name in f.keys()}
        if set(loaded) != set(specs):
            errors.append(f"{path}: names {sorted(loaded)} != {sorted(specs)}")
        for name, t in loaded.items():
            if name in specs:
                check_tensor(errors, path, name, t, specs[name], base)
        with open(path, "rb") as f:
            ours = f.read()
        theirs = safetensors.torch.save(loaded, metadata=meta)
        if meta and len(meta) > 1:
            # The reference keeps metadata in a hash map, so its order varies from run to run:
            # compare the header as an ordered list of entries, with the metadata as a dict.
            def layout(image):
                n = int.from_bytes(image[:8], "little")
                entries = json.loads(image[8:8 + n], object_pairs_hook=list)
                md = [dict(v) for k, v in entries if k == "__metadata__"]
                return n, md, [e for e in entries if e[0] != "__metadata__"], image[8 + n:]
            same = layout(ours) == layout(theirs)
        else:
            same = ours == theirs
        if not same:
            n = int.from_bytes(theirs[:8], "little")
            errors.append(f"{path}: bytes differ from safetensors.torch.save of the same tensors; "
                          f"reference header: {theirs[8:8 + n]!r}")
    if errors:
        print("\n".join(errors), file=sys.stderr)
        sys.exit(1)


def raw_file(header, data=b""):
    """A safetensors image from a header given as text (no padding) and raw data bytes."""
    h = header.encode("utf-8") if isinstance(header, str) else header
    return struct.pack("<Q", len(h)) + h + data


def cmd_corpus(out):
    import torch
    from safetensors.torch import save

    os.makedirs(out, exist_ok=True)
    gen = torch.Generator().manual_seed(7)
    valid = {
        "valid_every_dtype": {f"t.{dt}": make_tensor(torch, dt, [2, 1], gen) for dt in DTYPES},
        "valid_scalar_and_empty": {"s": torch.tensor(1.5), "e": torch.zeros(0, 4),
                                   "z": torch.zeros(3, 0, dtype=torch.int64)},
        "valid_empty": {},
    }
    for name, ts in valid.items():
        with open(os.path.join(out, name + ".safetensors"), "wb") as f:
            f.write(save(ts, metadata={"format": "pt"} if ts else None))
    with open(os.path.join(out, "valid_unpadded.safetensors"), "wb") as f:
        # Header length 61 (not a multiple of 8): the tensor sits misaligned.
        f.write(raw_file('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}     ',
                         struct.pack("<2f", 1.0, -2.0)))

    f32x2 = '"dtype":"F32","shape":[2]'
    eight = b"\0" * 8
    bad = {
        "short": b"\x05\0\0",
        "header_too_long": struct.pack("<Q", 1000) + b"{}",
        "not_json": raw_file("{\"a\":", eight),
        "not_object": raw_file("[1,2]"),
        "missing_offsets": raw_file('{"a":{' + f32x2 + "}}", eight),
        "dtype_not_string": raw_file('{"a":{"dtype":4,"shape":[2],"data_offsets":[0,8]}}', eight),
        "unknown_dtype": raw_file('{"a":{"dtype":"F8_E4M3","shape":[8],"data_offsets":[0,8]}}',
                                  eight),
        "negative_dim": raw_file('{"a":{"dtype":"U8","shape":[-8],"data_offsets":[0,8]}}', eight),
        "shape_overflow": raw_file('{"a":{"dtype":"F32","shape":[4294967296,4294967296],'
                                   '"data_offsets":[0,8]}}', eight),
        "shape_overflow_with_zero": raw_file('{"a":{"dtype":"U8","shape":[0,4294967296,4294967296],'
                                             '"data_offsets":[0,0]}}'),
        "offsets_reversed": raw_file('{"a":{' + f32x2 + ',"data_offsets":[8,0]}}', eight),
        "offsets_past_end": raw_file('{"a":{' + f32x2 + ',"data_offsets":[8,16]}}', eight),
        "size_mismatch": raw_file('{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}', eight),
        "overlap": raw_file('{"a":{' + f32x2 + ',"data_offsets":[0,8]},"b":{' + f32x2 +
                            ',"data_offsets":[4,12]}}', eight + b"\0" * 4),
        "hole": raw_file('{"a":{' + f32x2 + ',"data_offsets":[4,12]}}', eight + b"\0" * 4),
        "trailing": raw_file('{"a":{' + f32x2 + ',"data_offsets":[0,8]}}', eight + b"\0" * 4),
        "duplicate_name": raw_file('{"a":{' + f32x2 + ',"data_offsets":[0,8]},"a":{' + f32x2 +
                                   ',"data_offsets":[8,16]}}', eight * 2),
        "metadata_not_strings": raw_file('{"__metadata__":{"n":1}}'),
        "deep_nesting": raw_file("[" * 64 + "]" * 64),
    }
    for name, data in bad.items():
        with open(os.path.join(out, f"bad_{name}.safetensors"), "wb") as f:
            f.write(data)


def main():
    commands = {"write": cmd_write, "verify": cmd_verify, "corpus": cmd_corpus}
    args = sys.argv[1:]
    if not args or len(args) % 2 or any(c not in commands for c in args[::2]):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    for command, folder in zip(args[::2], args[1::2]):  # several in one run: torch loads once
        commands[command](folder)


if __name__ == "__main__":
    main()
