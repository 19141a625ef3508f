#!/usr/bin/env python3
"""Load generator for OpenAI-compatible servers (origami serve, llama-server, vLLM, ...).

For each request rate in --rates it sends --num-requests streaming requests with Poisson arrivals
(exponential gaps of mean 1/rate seconds; "inf" sends them all at once), and measures per request:
  TTFT  time from sending the request to the first chunk carrying content,
  ITL   inter-token latency: the gaps between consecutive content chunks,
  TPOT  time per output token after the first: (e2e - ttft) / (output_tokens - 1),
  E2E   time from sending the request to the end of the stream;
and per rate their mean/p50/p90/p99, requests/s and output tokens/s (over the time from the
first request sent to the last one finished).

Workload (seeded by --seed; the same seed gives the same requests on every server, and each rate
gets its own requests so a prefix cache cannot reuse those of an earlier rate):
  prompt length   --prompt-len L, drawn uniformly from L*(1 -/+ --len-jitter), rounded
  output length   --output-len O, drawn the same way; requests set max_tokens = O with
                  ignore_eos = true, so a server that honours ignore_eos (llama-server, vLLM,
                  origami) makes exactly O tokens
  prompt kind     --prompt-kind tokens (default for --endpoint completions): prompt is a list of
                  token ids, drawn from --token-range (default from the server's vocabulary size
                  when GET /v1/models reports it), so its length is exact;
                  text (the only kind for --endpoint chat): random common English words, about one
                  token each with most BPE vocabularies; the server's usage.prompt_tokens tells
                  the true count (column "in tok")
  shared prefix   --shared-prefix N: every prompt starts with the same N tokens (or N words; the
                  system message with --endpoint chat), followed by its own prompt-len tokens
Output tokens are counted from the usage of the final chunk (stream_options.include_usage) when
the server sends one, else as content chunks. After each rate, GET /metrics (when served) is read
for a prefix-cache hit rate: origami:prefix_cache_hit_rate, vLLM's prefix_cache_hits/queries
counters, or for llama-server 1 - (prompt tokens it evaluated) / (prompt tokens sent), from its
per-response "timings.prompt_n" (llamacpp:prompt_tokens_total needs --metrics).

Standard library only. Example:
  serve_load.py --url http://127.0.0.1:8080 --rates 1,4,inf --num-requests 32 \
                --prompt-len 128 --output-len 64 --json out.json
"""

import argparse
import http.client
import json
import math
import os
import random
import sys
import threading
import time
import urllib.parse

WORDS = ("the of and to in is that for it as was with be by on not he this are or his from at "
         "which but have an they you were her she there can all their has been if more one when "
         "will would who so no what up out about into than them only other time new some could "
         "these two may first then do any like my now over such our man me even most made after "
         "also did many before must through back years where much your way well down should "
         "because each just those people how too little state good very make world still own see "
         "men work long get here between both life being under never day same another know while "
         "last might us great old year off come since against go came right used take three").split()


# ----------------------------------------------------------------------------------------------
# statistics

def percentile(sorted_values, q):
    """Linear interpolation between closest ranks (numpy's default)."""
    if not sorted_values:
        return float("nan")
    k = (len(sorted_values) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def summary(values):
    v = sorted(values)
    if not v:
        return {"mean": None, "p50": None, "p90": None, "p99": None, "max": None, "n": 0}
    return {"mean": sum(v) / len(v), "p50": percentile(v, 50), "p90": percentile(v, 90),
            "p99": percentile(v, 99), "max": v[-1], "n": len(v)}


# ----------------------------------------------------------------------------------------------
# HTTP

class Server:
    def __init__(self, url, api_key, timeout):
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("http", "https"):
            raise SystemExit("serve_load.py: --url must be http://HOST:PORT (got %r)" % url)
        self.https = u.scheme == "https"
        self.host = u.hostname
        self.port = u.port or (443 if self.https else 80)
        self.base = u.path.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout

    def connection(self, timeout=None):
        cls = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        return cls(self.host, self.port, timeout=timeout or self.timeout)

    def headers(self, extra=None):
        h = {"Accept": "*/*"}
        if self.api_key:
            h["Authorization"] = "Bearer " + self.api_key
        h.update(extra or {})
        return h

    def get(self, path, timeout=10):
        """(status, body text) of GET path, or (None, error text)."""
        conn = self.connection(timeout)
        try:
            conn.request("GET", self.base + path, headers=self.headers())
            r = conn.getresponse()
            return r.status, r.read().decode("utf-8", "replace")
        except (OSError, http.client.HTTPException) as e:
            return None, str(e)
        finally:
            conn.close()


def sse_events(resp):
    """Yields (arrival time, data string) for each `data:` line of a text/event-stream."""
    while True:
        line = resp.readline()
        if not line:
            return
        now = time.perf_counter()
        line = line.strip()
        if line.startswith(b"data:"):
            yield now, line[5:].strip().decode("utf-8", "replace")


def stream_request(server, path, body):
    """Sends one streaming request; returns its measurements (times relative to the send)."""
    out = {"ok": False, "error": None, "ttft": None, "e2e": None, "chunk_times": [],
           "content_chunks": 0, "usage_completion_tokens": None, "usage_prompt_tokens": None,
           "prompt_evaluated": None, "text_chars": 0}
    payload = json.dumps(body).encode()
    conn = server.connection()
    t0 = time.perf_counter()
    out["start"] = t0
    try:
        conn.request("POST", server.base + path, body=payload,
                     headers=server.headers({"Content-Type": "application/json"}))
        resp = conn.getresponse()
        if resp.status != 200:
            out["error"] = "HTTP %d: %s" % (resp.status, resp.read(500).decode("utf-8", "replace"))
            return out
        done = False
        for now, data in sse_events(resp):
            if data == "[DONE]":
                done = True
                break
            try:
                obj = json.loads(data)
            except ValueError:
                out["error"] = "bad SSE data: " + data[:200]
                return out
            if not isinstance(obj, dict):
                continue
            if obj.get("error"):
                out["error"] = "server error: " + json.dumps(obj["error"])[:300]
                return out
            text = ""
            for ch in obj.get("choices") or []:
                if "text" in ch:  # completions
                    text += ch.get("text") or ""
                delta = ch.get("delta") or {}
                text += (delta.get("content") or "") + (delta.get("reasoning_content") or "")
            if text:
                out["chunk_times"].append(now - t0)
                out["content_chunks"] += 1
                out["text_chars"] += len(text)
            usage = obj.get("usage")
            if usage:
                out["usage_completion_tokens"] = usage.get("completion_tokens")
                out["usage_prompt_tokens"] = usage.get("prompt_tokens")
            timings = obj.get("timings")  # llama-server: prompt_n = prompt tokens it evaluated
            if isinstance(timings, dict) and timings.get("prompt_n", -1) >= 0:
                out["prompt_evaluated"] = timings["prompt_n"]
        out["e2e"] = time.perf_counter() - t0
        if not done and out["usage_completion_tokens"] is None and not out["content_chunks"]:
            out["error"] = "stream ended without data"
            return out
        out["ok"] = True
    except (OSError, http.client.HTTPException) as e:
        out["error"] = "%s: %s" % (type(e).__name__, e)
    finally:
        conn.close()
        out["end"] = time.perf_counter()
    if out["chunk_times"]:
        out["ttft"] = out["chunk_times"][0]
    return out


# ----------------------------------------------------------------------------------------------
# workload

def jittered(rng, mean, jitter):
    if jitter <= 0:
        return max(1, int(mean))
    return max(1, int(round(rng.uniform(mean * (1 - jitter), mean * (1 + jitter)))))


class Workload:
    def __init__(self, args, token_lo, token_hi):
        self.args = args
        self.token_lo, self.token_hi = token_lo, token_hi
        prefix_rng = random.Random(args.seed * 1000003 + 7)
        self.prefix = self.unit_list(prefix_rng, args.shared_prefix)

    def unit_list(self, rng, n):
        if self.args.prompt_kind == "tokens":
            return [rng.randrange(self.token_lo, self.token_hi) for _ in range(n)]
        return [rng.choice(WORDS) for _ in range(n)]

    def requests(self, rate_index, n):
        """n (prompt units, output length) pairs for the rate_index-th rate."""
        rng = random.Random(self.args.seed * 7919 + 104729 * (rate_index + 1))
        reqs = []
        for _ in range(n):
            plen = jittered(rng, self.args.prompt_len, self.args.len_jitter)
            olen = jittered(rng, self.args.output_len, self.args.len_jitter)
            reqs.append((self.unit_list(rng, plen), olen))
        return reqs

    def body(self, units, olen):
        a = self.args
        common = {"model": a.model, "max_tokens": olen, "stream": True,
                  "stream_options": {"include_usage": True}, "temperature": a.temperature}
        if not a.no_ignore_eos:
            common["ignore_eos"] = True
        common.update(a.extra_body)
        if a.endpoint == "completions":
            if a.prompt_kind == "tokens":
                prompt = self.prefix + units
            else:
                prompt = " ".join(self.prefix + units)
            return "/v1/completions", dict(common, prompt=prompt)
        messages = []
        if self.prefix:
            messages.append({"role": "system", "content": " ".join(self.prefix)})
        messages.append({"role": "user", "content": " ".join(units)})
        return "/v1/chat/completions", dict(common, messages=messages)


# ----------------------------------------------------------------------------------------------
# metrics endpoint

def read_metrics(server):
    """{name: summed value} of GET /metrics (Prometheus text), or None where it is not served."""
    status, text = server.get("/metrics")
    if status != 200:
        return None
    values = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(None, 1)
        if len(parts) != 2:
            continue
        name = parts[0].split("{", 1)[0]
        try:
            values[name] = values.get(name, 0.0) + float(parts[1])
        except ValueError:
            pass
    return values


def prefix_cache_report(before, after, results):
    """The prefix-cache hit rates the server lets us see, as {source: rate}."""
    rates = {}
    if after:
        for name, v in after.items():
            if name.endswith("prefix_cache_hit_rate"):
                rates[name] = v  # the server's own figure (origami:prefix_cache_hit_rate)
        hits = [n for n in after if n.endswith("prefix_cache_hits_total")
                or n.endswith("prefix_cache_hits")]
        for h in hits:
            q = h.replace("hits", "queries")
            if q in after:
                dq = after[q] - (before or {}).get(q, 0.0)
                dh = after[h] - (before or {}).get(h, 0.0)
                if dq > 0:
                    rates[h.replace("_total", "") + "/queries (this run)"] = dh / dq
        if "llamacpp:prompt_tokens_total" in after:
            sent = sum(r["usage_prompt_tokens"] or 0 for r in results if r["ok"])
            evaluated = after["llamacpp:prompt_tokens_total"] - \
                (before or {}).get("llamacpp:prompt_tokens_total", 0.0)
            if sent > 0:
                rates["llamacpp: 1 - prompt_tokens_total/sent (this run)"] = 1 - evaluated / sent
    ok = [r for r in results if r["ok"] and r["prompt_evaluated"] is not None
          and r["usage_prompt_tokens"]]
    if ok:
        sent = sum(r["usage_prompt_tokens"] for r in ok)
        evaluated = sum(r["prompt_evaluated"] for r in ok)
        rates["responses: 1 - timings.prompt_n/prompt_tokens"] = 1 - evaluated / sent
    return rates


# ----------------------------------------------------------------------------------------------
# one rate

def run_rate(server, workload, rate, rate_index, args):
    reqs = workload.requests(rate_index, args.num_requests)
    arrival_rng = random.Random(args.seed * 31 + rate_index)
    results = [None] * len(reqs)
    limiter = threading.Semaphore(args.max_concurrency) if args.max_concurrency else None

    def worker(i, units, olen):
        try:
            path, body = workload.body(units, olen)
            r = stream_request(server, path, body)
            r["prompt_units"] = len(workload.prefix) + len(units)
            r["max_tokens"] = olen
            results[i] = r
        finally:
            if limiter:
                limiter.release()

    metrics_before = read_metrics(server)
    load_before = os.getloadavg()[0]
    threads = []
    t_start = time.perf_counter()
    next_at = t_start
    for i, (units, olen) in enumerate(reqs):
        if i > 0 and rate != math.inf:
            next_at += arrival_rng.expovariate(rate)
        delay = next_at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        if limiter:
            limiter.acquire()
        t = threading.Thread(target=worker, args=(i, units, olen), daemon=True)
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    metrics_after = read_metrics(server)

    ok = [r for r in results if r and r["ok"]]
    failed = [r for r in results if not r or not r["ok"]]
    first = min((r["start"] for r in results if r), default=t_start)
    last = max((r["end"] for r in results if r), default=t_start)
    duration = max(last - first, 1e-9)

    out_tokens, ttft, tpot, itl, e2e, in_tokens = [], [], [], [], [], []
    usage_seen = 0
    for r in ok:
        n = r["usage_completion_tokens"]
        if n is not None:
            usage_seen += 1
        else:
            n = r["content_chunks"]
        r["output_tokens"] = n
        out_tokens.append(n)
        in_tokens.append(r["usage_prompt_tokens"] if r["usage_prompt_tokens"] is not None
                         else r["prompt_units"])
        e2e.append(r["e2e"])
        if r["ttft"] is not None:
            ttft.append(r["ttft"])
            if n > 1:
                tpot.append((r["e2e"] - r["ttft"]) / (n - 1))
        ct = r["chunk_times"]
        itl.extend(b - a for a, b in zip(ct, ct[1:]))

    ms = lambda s: {k: (v * 1000.0 if isinstance(v, float) and k != "n" else v)
                    for k, v in summary(s).items()}
    res = {
        "rate": "inf" if rate == math.inf else rate,
        "num_requests": len(reqs), "completed": len(ok), "failed": len(failed),
        "duration_s": duration,
        "request_throughput": len(ok) / duration,
        "output_throughput": sum(out_tokens) / duration,
        "total_token_throughput": (sum(out_tokens) + sum(in_tokens)) / duration,
        "total_output_tokens": sum(out_tokens), "total_input_tokens": sum(in_tokens),
        "mean_input_tokens": sum(in_tokens) / len(ok) if ok else None,
        "mean_output_tokens": sum(out_tokens) / len(ok) if ok else None,
        "requested_output_tokens": sum(olen for _, olen in reqs),
        "output_tokens_from_usage": usage_seen,
        "content_chunks": sum(r["content_chunks"] for r in ok),
        "ttft_ms": ms(ttft), "tpot_ms": ms(tpot), "itl_ms": ms(itl), "e2e_ms": ms(e2e),
        "prefix_cache_hit_rate": prefix_cache_report(metrics_before, metrics_after, ok),
        "loadavg_1min": [load_before, os.getloadavg()[0]],  # other work on the machine?
        "errors": sorted({r["error"] for r in failed if r})[:5]
                  + (["%d requests never ran" % sum(1 for r in results if not r)]
                     if any(not r for r in results) else []),
    }
    if args.per_request:
        res["requests"] = [{k: r[k] for k in ("ok", "error", "start", "ttft", "e2e", "prompt_units",
                                               "usage_prompt_tokens", "max_tokens",
                                               "content_chunks", "usage_completion_tokens",
                                               "chunk_times")} for r in results if r]
    return res


# ----------------------------------------------------------------------------------------------
# report

def fmt(v, digits=1):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return "%.*f" % (digits, v)


def print_table(label, results, shared_prefix=0, file=sys.stdout):
    cols = [("rate", 6), ("ok/n", 8), ("req/s", 7), ("out tok/s", 10), ("in tok", 7),
            ("out tok", 7), ("TTFT mean", 10), ("p50", 8), ("p99", 8), ("TPOT mean", 10),
            ("p50", 7), ("p99", 7), ("ITL mean", 9), ("p50", 7), ("p99", 7), ("E2E mean", 9),
            ("p50", 8), ("p99", 8)]
    print("\n%s   (latencies in ms; rate in requests/s)" % label, file=file)
    print(" ".join(h.rjust(w) for h, w in cols), file=file)
    for r in results:
        row = [str(r["rate"]), "%d/%d" % (r["completed"], r["num_requests"]),
               fmt(r["request_throughput"], 2), fmt(r["output_throughput"]),
               fmt(r["mean_input_tokens"]), fmt(r["mean_output_tokens"])]
        for key in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
            s = r[key]
            row += [fmt(s["mean"]), fmt(s["p50"]), fmt(s["p99"])]
        print(" ".join(v.rjust(w) for v, (_, w) in zip(row, cols)), file=file)
    for r in results:
        rates = r["prefix_cache_hit_rate"]  # the server's own figure first (insertion order)
        if rates and (shared_prefix or any(rates.values())):
            name = next(iter(rates))
            print("  rate %s: prefix-cache hit rate %.3f  [%s]" % (r["rate"], rates[name], name),
                  file=file)
        for e in r["errors"]:
            print("  rate %s: error: %s" % (r["rate"], e), file=file)
        if r["completed"] and r["output_tokens_from_usage"] < r["completed"]:
            print("  rate %s: %d of %d responses had no usage; their output tokens are content "
                  "chunks" % (r["rate"], r["completed"] - r["output_tokens_from_usage"],
                              r["completed"]), file=file)
        if r["completed"] and r["total_output_tokens"] != r["requested_output_tokens"] \
                and r["failed"] == 0:
            print("  rate %s: the server made %d output tokens of the %d requested (ignore_eos "
                  "not honoured?)" % (r["rate"], r["total_output_tokens"],
                                      r["requested_output_tokens"]), file=file)


# ----------------------------------------------------------------------------------------------

def parse_rates(text):
    rates = []
    for part in text.split(","):
        part = part.strip().lower()
        if part in ("inf", "infinity"):
            rates.append(math.inf)
        else:
            v = float(part)
            if v <= 0:
                raise argparse.ArgumentTypeError("rates must be > 0 or inf")
            rates.append(v)
    return rates


def detect_model_and_vocab(server, args):
    """The model name and vocabulary size from GET /v1/models, where the server tells them."""
    status, text = server.get("/v1/models")
    name, vocab = None, None
    if status == 200:
        try:
            data = json.loads(text).get("data") or []
            if data:
                name = data[0].get("id")
                meta = data[0].get("meta") or {}
                vocab = meta.get("n_vocab") or data[0].get("vocab_size")
        except (ValueError, AttributeError):
            pass
    return name, vocab


def wait_ready(server, timeout):
    deadline = time.time() + timeout
    last = ""
    while time.time() < deadline:
        status, text = server.get("/health", timeout=5)
        if status == 200:
            return
        last = "%s %s" % (status, text[:200])
        time.sleep(0.5)
    raise SystemExit("serve_load.py: %s:%d not healthy after %ds (%s)"
                     % (server.host, server.port, timeout, last))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--model", default=None, help="model name to send (default: the first of "
                    "GET /v1/models, else 'default')")
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--endpoint", choices=("completions", "chat"), default="completions")
    ap.add_argument("--prompt-kind", choices=("tokens", "text"), default=None,
                    help="token-id prompts (completions only; default) or random words")
    ap.add_argument("--rates", type=parse_rates, default=parse_rates("0.5,1,2,inf"))
    ap.add_argument("--num-requests", type=int, default=32, help="per rate")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--len-jitter", type=float, default=0.25,
                    help="lengths uniform in L*(1-j)..L*(1+j) (0: fixed)")
    ap.add_argument("--shared-prefix", type=int, default=0,
                    help="every prompt starts with the same N tokens (words for text prompts)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--token-range", default=None,
                    help="LO:HI, token ids of token prompts (default: 1000 or a quarter of the "
                    "vocabulary, up to min(vocabulary, 32000))")
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--no-ignore-eos", action="store_true", help="do not send ignore_eos")
    ap.add_argument("--extra-body", type=json.loads, default={},
                    help="JSON object merged into every request body")
    ap.add_argument("--max-concurrency", type=int, default=0, help="cap on requests in flight")
    ap.add_argument("--warmup", type=int, default=1, help="requests sent before measuring")
    ap.add_argument("--timeout", type=float, default=600, help="per request, seconds")
    ap.add_argument("--wait-ready", type=float, default=0,
                    help="first wait up to this many seconds for GET /health to answer 200")
    ap.add_argument("--label", default=None, help="name of the server in the report")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--per-request", action="store_true", help="put every request in the JSON")
    args = ap.parse_args(argv)

    if args.prompt_kind is None:
        args.prompt_kind = "tokens" if args.endpoint == "completions" else "text"
    if args.endpoint == "chat" and args.prompt_kind == "tokens":
        ap.error("--endpoint chat takes text prompts only")
    if args.num_requests < 1 or args.prompt_len < 1 or args.output_len < 1:
        ap.error("--num-requests, --prompt-len and --output-len must be >= 1")
    if not 0 <= args.len_jitter < 1:
        ap.error("--len-jitter must be in [0, 1)")

    server = Server(args.url, args.api_key, args.timeout)
    if args.wait_ready:
        wait_ready(server, args.wait_ready)
    name, vocab = detect_model_and_vocab(server, args)
    if args.model is None:
        args.model = name or "default"
    if args.token_range:
        lo, hi = (int(x) for x in args.token_range.split(":"))
    else:
        v = int(vocab) if vocab else 32000
        lo, hi = min(1000, v // 4), min(v, 32000)
    if args.prompt_kind == "tokens" and not 0 <= lo < hi:
        ap.error("bad --token-range %d:%d" % (lo, hi))
    label = args.label or args.url

    workload = Workload(args, lo, hi)
    print("serve_load: %s model=%s endpoint=%s prompts=%s%s prompt-len=%d output-len=%d "
          "jitter=%.2f shared-prefix=%d requests/rate=%d seed=%d"
          % (label, args.model, args.endpoint, args.prompt_kind,
             " ids %d:%d" % (lo, hi) if args.prompt_kind == "tokens" else "",
             args.prompt_len, args.output_len, args.len_jitter, args.shared_prefix,
             args.num_requests, args.seed), flush=True)

    for i in range(args.warmup):
        wrng = random.Random(args.seed * 17 + 3 + i)
        units = workload.unit_list(wrng, min(16, args.prompt_len))
        path, body = workload.body(units, min(8, args.output_len))
        r = stream_request(server, path, body)
        if not r["ok"]:
            raise SystemExit("serve_load.py: warm-up request failed: %s" % r["error"])

    results = []
    for i, rate in enumerate(args.rates):
        res = run_rate(server, workload, rate, i, args)
        results.append(res)
        print("  rate %-5s %d/%d ok in %.1f s: %.2f req/s, %.1f output tok/s, TTFT p50 %s ms "
              "p99 %s ms" % (res["rate"], res["completed"], res["num_requests"], res["duration_s"],
                             res["request_throughput"], res["output_throughput"],
                             fmt(res["ttft_ms"]["p50"]), fmt(res["ttft_ms"]["p99"])), flush=True)
    print_table(label, results, args.shared_prefix)

    if args.json:
        config = {k: v for k, v in vars(args).items() if k not in ("api_key", "rates")}
        config["rates"] = ["inf" if r == math.inf else r for r in args.rates]
        config["token_range"] = [lo, hi]
        with open(args.json, "w") as f:
            json.dump({"label": label, "url": args.url, "config": config, "results": results},
                      f, indent=1)
    return 0 if all(r["failed"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
