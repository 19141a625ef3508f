"""origami serve under load: batch invariance, clients that leave, a KV cache too small for the
load (preemption), a bounded queue (429) and SIGTERM draining. References: the same request
alone on a server without constraints, and counts computed here.
"""

import concurrent.futures as cf
import http.client
import json
import os
import random
import signal
import tempfile
import time
import unittest

import serve_lib

MODEL = None
NAME = None


def setUpModule():
    global MODEL, NAME
    cache = os.environ.get("ORIGAMI_SERVE_MODELS") or tempfile.mkdtemp(prefix="origami_serve_")
    MODEL = serve_lib.make_model(cache, "llama")
    NAME = os.path.basename(MODEL)


def completion(server, prompt, max_tokens, **kw):
    status, _, body = serve_lib.post(server.url + "/v1/completions",
                                     {"prompt": prompt, "max_tokens": max_tokens, **kw},
                                     timeout=300)
    assert status == 200, body
    return body


def random_prompt(rng, n):
    words = serve_lib.CORPUS.split()
    return " ".join(rng.choice(words) for _ in range(n))


class BatchInvariance(unittest.TestCase):
    def test_same_tokens_alone_and_among_others(self):
        self.check(MODEL)

    def test_moe_same_tokens_alone_and_among_others(self):
        # Experts see a different number of rows in every batch (grouped GEMMs).
        self.check(serve_lib.make_model(os.path.dirname(MODEL), "mixtral"))

    def check(self, model):
        rng = random.Random(3)
        # A ~300-token prompt, prefilled in chunks of whatever the step budget leaves, on two
        # threads; its log-probabilities must be bit-equal too.
        target_greedy = {"prompt": random_prompt(random.Random(9), 90), "max_tokens": 24,
                         "temperature": 0, "logprobs": 0}
        target_seeded = {"prompt": "servers answer requests", "max_tokens": 24,
                         "temperature": 0.8, "seed": 11, "logprobs": 0}
        with serve_lib.Server(model, ["--max-num-seqs", "32", "--max-num-batched-tokens", "64"],
                              env={"OMP_NUM_THREADS": "2"}) as s:
            def run(req):
                return completion(s, req.pop("prompt"), req.pop("max_tokens"), **req)

            alone = [run(dict(t)) for t in (target_greedy, target_seeded)]
            for others in (1, 7, 31):
                reqs = [dict(target_greedy), dict(target_seeded)]
                for i in range(others):
                    reqs.append({"prompt": random_prompt(rng, rng.randint(1, 40)),
                                 "max_tokens": rng.randint(1, 30),
                                 "temperature": rng.choice([0, 0.7, 1.0]), "seed": i})
                order = list(range(len(reqs)))
                rng.shuffle(order)
                with cf.ThreadPoolExecutor(len(reqs)) as ex:
                    futs = {i: ex.submit(run, dict(reqs[i])) for i in order}
                    got = [futs[0].result(), futs[1].result()]
                for a, b in zip(alone, got):
                    self.assertEqual(a["choices"][0]["logprobs"], b["choices"][0]["logprobs"],
                                     "tokens differ among %d other requests" % others)


class Load(unittest.TestCase):
    def test_clients_that_leave_free_their_blocks(self):
        # Four at a time: most of the 50 are still waiting (or just started) when their client
        # leaves.
        with serve_lib.Server(MODEL, ["--max-num-seqs", "4"]) as s:
            idle = s.metric("origami:kv_cache_usage_perc")
            conns = []
            for i in range(50):
                c = http.client.HTTPConnection("127.0.0.1", s.port, timeout=60)
                c.request("POST", "/v1/completions",
                          json.dumps({"prompt": "the lazy dog %d" % i, "max_tokens": 480,
                                      "stream": True, "temperature": 0, "ignore_eos": True}),
                          {"Content-Type": "application/json"})
                conns.append(c)
            for c in conns:  # the first chunk, then the client leaves
                r = c.getresponse()
                self.assertEqual(r.status, 200)
                self.assertTrue(r.readline().startswith(b"data: "))
                c.sock.close()
                c.close()
            deadline = time.time() + 30
            while time.time() < deadline:
                if (s.metric("origami:num_requests_running") == 0 and
                        s.metric("origami:num_requests_waiting") == 0 and
                        s.metric("origami:kv_cache_usage_perc") == idle):
                    break
                time.sleep(0.2)
            self.assertEqual(s.metric("origami:num_requests_running"), 0)
            self.assertEqual(s.metric("origami:kv_cache_usage_perc"), idle)
            self.assertGreaterEqual(s.metric("origami:request_success_total",
                                             finished_reason="abort"), 1)

    def test_small_kv_cache_preempts_and_every_request_equals_its_run_alone(self):
        rng = random.Random(5)
        reqs = [(random_prompt(rng, 10 + 3 * i), 40) for i in range(8)]
        with serve_lib.Server(MODEL) as big:
            want = [completion(big, p, m, temperature=0)["choices"][0]["text"] for p, m in reqs]
        # 8 requests of ~60-80 tokens need ~40 blocks of 16; the cache holds 12.
        with serve_lib.Server(MODEL, ["--kv-blocks", "12", "--max-num-seqs", "8"]) as small:
            with cf.ThreadPoolExecutor(8) as ex:
                got = list(ex.map(lambda r: completion(small, r[0], r[1], temperature=0), reqs))
            self.assertGreater(small.metric("origami:num_preemptions_total"), 0)
        for w, g in zip(want, got):
            self.assertEqual(g["choices"][0]["text"], w)

    def test_bounded_queue_answers_429(self):
        K = 4
        with serve_lib.Server(MODEL, ["--max-queue", str(K), "--max-num-seqs", "1"]) as s:
            def one(i):
                t0 = time.time()
                status, hdrs, body = serve_lib.post(
                    s.url + "/v1/completions",
                    {"prompt": "the quick %d" % i, "max_tokens": 400, "temperature": 0,
                     "ignore_eos": True}, timeout=300)
                return status, hdrs, time.time() - t0
            with cf.ThreadPoolExecutor(48) as ex:
                results = list(ex.map(one, range(12)))
            ok = [r for r in results if r[0] == 200]
            refused = [r for r in results if r[0] == 429]
            self.assertEqual(len(ok), K)
            self.assertEqual(len(refused), 12 - K)
            for status, hdrs, seconds in refused:
                self.assertIn("Retry-After", hdrs)
                self.assertLess(seconds, 5.0)
            self.assertEqual(s.metric("origami:request_rejected_total", reason="queue_full"),
                             12 - K)


    def test_a_flood_of_refused_requests_holds_no_memory(self):
        # A queue of one and 2000 requests (~130-token prompts) from 64 threads at once: most are
        # refused with 429, the rest answered. Reference: the server's resident set before the
        # flood, after a warm-up of the same kind (what a request leaves behind, admitted or not,
        # is freed with its answer).
        with serve_lib.Server(MODEL, ["--max-queue", "1", "--max-num-seqs", "1"]) as s:
            def rss_kb():
                with open("/proc/%d/status" % s.proc.pid) as f:
                    return int(next(l for l in f if l.startswith("VmRSS:")).split()[1])
            prompt = "origami " * 32

            def one(i):
                return serve_lib.post(s.url + "/v1/completions",
                                      {"prompt": prompt + str(i), "max_tokens": 2},
                                      timeout=60)[0]
            with cf.ThreadPoolExecutor(64) as ex:
                warm = list(ex.map(one, range(500)))
                before = rss_kb()
                t0 = time.time()
                flood = list(ex.map(one, range(2000)))
                seconds = time.time() - t0
                after = rss_kb()
        self.assertLessEqual(set(warm + flood), {200, 429})
        self.assertGreater(flood.count(429), 400)  # a flood of refusals (about half, here)
        self.assertLess(seconds, 60.0)
        # 0.6 MB of request bodies went through; allow 8 MB of allocator slack.
        self.assertLess(after - before, 8 * 1024,
                        "resident set grew from %d to %d kB" % (before, after))
        print("flood: %d refused, %d answered in %.2f s; resident %d -> %d kB" %
              (flood.count(429), flood.count(200), seconds, before, after))


class Drain(unittest.TestCase):
    def drain(self, timeout_s):
        # One sequence at a time, so that the requests are still running when the signal comes.
        s = serve_lib.Server(MODEL, ["--drain-timeout", str(timeout_s), "--max-num-seqs", "1"])
        with s:
            with cf.ThreadPoolExecutor(48) as ex:
                futs = [ex.submit(serve_lib.post, s.url + "/v1/completions",
                                  {"prompt": "paper cranes %d" % i, "max_tokens": 400,
                                   "temperature": 0, "ignore_eos": True}, None, None, 300)
                        for i in range(48)]
                time.sleep(0.1)
                t0 = time.time()
                s.proc.send_signal(signal.SIGTERM)
                rc = s.proc.wait(120)
                seconds = time.time() - t0
                results = [f.result() for f in futs]
        return rc, seconds, results

    def test_sigterm_lets_requests_finish(self):
        rc, _, results = self.drain(30)
        self.assertEqual(rc, 0)
        for status, _, body in results:
            self.assertEqual(status, 200, body)
            self.assertEqual(body["usage"]["completion_tokens"], 400)
        self.assertEqual(len(results), 48)

    def test_sigterm_with_no_drain_time_stops_at_once(self):
        rc, seconds, results = self.drain(0)
        self.assertEqual(rc, 0)
        self.assertLess(seconds, 15)
        statuses = [r[0] for r in results]
        self.assertTrue(all(st in (200, 503) for st in statuses), results)
        self.assertIn(503, statuses)


if __name__ == "__main__":
    unittest.main(verbosity=2)
