#!/usr/bin/env python3
"""PyTorch side of bench/bench_gemm.cpp: times torch.matmul on the same problems.

Usage: torch_gemm.py --threads N --reps R [--budget-s S] CASE...
  CASE is gemm:NAME:DTYPE:M:N:K or grouped:NAME:DTYPE:K:N:ROWS (ROWS comma-separated rows per
  group). DTYPE is f32 or bf16 (bf16 inputs, bf16 output, as torch.matmul gives).
Prints one JSON line per case: {"name", "dtype", "best_s", "median_s", "gflops", "row_scale"}.
best_s and median_s are for the full problem. A PyTorch whose fp32 matmul goes to a slow BLAS
(Debian's torch with the reference libblas runs at about 1 GFLOP/s) would take minutes on the
large problems: when a case would run longer than the budget, it is timed on a fraction of its
rows (row_scale < 1) and the times scaled up to the full problem.
"""
import argparse
import json
import statistics
import time

import torch


def time_it(fn, reps, flops):
    """Best and median seconds per call; small problems take many calls per sample (as the C++
    side does: about 0.1 GFLOP per sample, at most 1000 calls)."""
    calls = int(min(max(1e8 / flops, 1), 1000))
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - t0) / calls)
    return min(times), statistics.median(times)


def make_case(kind, dims, dtype, scale):
    """The problem with its rows scaled by `scale`: (function to time, its flops)."""
    if kind == "gemm":
        m, n, k = (int(d) for d in dims)
        m = max(1, round(m * scale))
        a = torch.randn(m, k).to(dtype)
        b = torch.randn(k, n).to(dtype)
        c = torch.empty(m, n, dtype=dtype)
        return (lambda: torch.matmul(a, b, out=c)), 2.0 * m * n * k
    k, n = int(dims[0]), int(dims[1])
    rows = [max(1, round(int(r) * scale)) if int(r) else 0 for r in dims[2].split(",")]
    x = torch.randn(sum(rows), k).to(dtype)
    w = torch.randn(len(rows), k, n).to(dtype)
    out = torch.empty(sum(rows), n, dtype=dtype)
    xs, outs = torch.split(x, rows), torch.split(out, rows)

    def fn():
        for g, (x_g, o_g) in enumerate(zip(xs, outs)):
            if x_g.shape[0]:
                torch.matmul(x_g, w[g], out=o_g)
    return fn, 2.0 * sum(rows) * n * k


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--budget-s", type=float, default=20.0)
    p.add_argument("cases", nargs="*")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtypes = {"f32": torch.float32, "bf16": torch.bfloat16}
    for case in args.cases:
        kind, name, dt, *dims = case.split(":")
        dtype = dtypes[dt]
        with torch.no_grad():
            # Probe on 1/16 of the rows to estimate the full problem's time.
            probe, probe_flops = make_case(kind, dims, dtype, 1 / 16)
            probe()
            t0 = time.perf_counter()
            probe()
            rate = probe_flops / max(time.perf_counter() - t0, 1e-9)
            fn, flops = make_case(kind, dims, dtype, 1.0)
            scale = min(1.0, args.budget_s * rate / (flops * (args.reps + 1)))
            if scale < 1.0:
                fn, part_flops = make_case(kind, dims, dtype, scale)
                best, median = time_it(fn, args.reps, part_flops)
                best, median = best * flops / part_flops, median * flops / part_flops
            else:
                best, median = time_it(fn, args.reps, flops)
        print(json.dumps({"name": name, "dtype": dt, "best_s": best, "median_s": median,
                          "gflops": flops / best / 1e9, "row_scale": scale}), flush=True)


if __name__ == "__main__":
    main()
