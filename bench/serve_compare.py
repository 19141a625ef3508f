#!/usr/bin/env python3
"""Side-by-side table of two serve_load.py --json results run at the same rates.

    serve_compare.py BASELINE.json CANDIDATE.json [--json OUT]

Prints, per rate: requests/s, output tokens/s, the candidate/baseline ratio of output tokens/s,
and TTFT p50/p99 and TPOT p50 of both.
"""

import argparse
import json
import sys


def load(path):
    with open(path) as f:
        return json.load(f)


def fmt(v, digits=1):
    return "-" if v is None else "%.*f" % (digits, v)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("baseline")
    ap.add_argument("candidate")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    base, cand = load(a.baseline), load(a.candidate)
    bl, cl = base["label"], cand["label"]
    by_rate = {str(r["rate"]): r for r in base["results"]}
    rows = []
    for c in cand["results"]:
        b = by_rate.get(str(c["rate"]))
        if b is None:
            continue
        ratio = (c["output_throughput"] / b["output_throughput"]
                 if b["output_throughput"] > 0 else None)
        rows.append({"rate": c["rate"], "ratio": ratio,
                     "baseline": b, "candidate": c})

    w = max(len(bl), len(cl), 8)
    print("\n%s vs %s   (same requests; rate in requests/s, latencies in ms)" % (cl, bl))
    head = ["rate", "ok", "req/s", "out tok/s", "ratio", "TTFT p50", "TTFT p99", "TPOT p50",
            "ITL p99", "E2E p99", "prefix hit"]
    widths = [6, 7, 7, 10, 7, 9, 9, 9, 8, 9, 10]
    print("%-*s " % (w, "server") + " ".join(h.rjust(x) for h, x in zip(head, widths)))
    for row in rows:
        for name, r, ratio in ((bl, row["baseline"], None), (cl, row["candidate"], row["ratio"])):
            vals = [str(r["rate"]), "%d/%d" % (r["completed"], r["num_requests"]),
                    fmt(r["request_throughput"], 2), fmt(r["output_throughput"]),
                    "" if ratio is None else fmt(ratio, 2),
                    fmt(r["ttft_ms"]["p50"]), fmt(r["ttft_ms"]["p99"]),
                    fmt(r["tpot_ms"]["p50"]), fmt(r["itl_ms"]["p99"]), fmt(r["e2e_ms"]["p99"]),
                    fmt(next(iter(r.get("prefix_cache_hit_rate", {}).values()), None), 3)]
            print("%-*s " % (w, name) + " ".join(v.rjust(x) for v, x in zip(vals, widths)))
    print()
    for row in rows:
        b, c = row["baseline"], row["candidate"]
        print("rate %-5s output tok/s %s/%s = %s   TTFT p99: %s %s ms, %s %s ms"
              % (row["rate"], cl, bl, fmt(row["ratio"], 2), bl, fmt(b["ttft_ms"]["p99"]),
                 cl, fmt(c["ttft_ms"]["p99"])))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"baseline": bl, "candidate": cl,
                       "rates": [{"rate": r["rate"], "output_throughput_ratio": r["ratio"],
                                  "baseline_ttft_p99_ms": r["baseline"]["ttft_ms"]["p99"],
                                  "candidate_ttft_p99_ms": r["candidate"]["ttft_ms"]["p99"]}
                                 for r in rows]}, f, indent=1)
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
