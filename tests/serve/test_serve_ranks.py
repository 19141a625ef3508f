"""origami serve on several ranks (mpirun) answers as on one rank: greedy completions and chat
for TP2, EP2 folded with attention TP2 (a MoE model) and PP2, each compared with the same
requests on one rank and with transformers' greedy tokens (float64, up to the first near-tie);
echo with logprobs over a prompt longer than one step's logit rows gives transformers'
log-probabilities (within 1e-4).
A rank that dies ends the job, naming it; a rank that hangs makes the engine fail at the collective
timeout: the request gets a 500 naming the rank, /health answers 503, and the job ends.
"""

import os
import signal
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.request

import serve_lib

CACHE = None
PROMPTS = ["the quick brown fox", "servers answer requests, tokens stream", "x"]


def setUpModule():
    global CACHE
    CACHE = os.environ.get("ORIGAMI_SERVE_MODELS") or tempfile.mkdtemp(prefix="origami_serve_")


def answers(server, name):
    out = []
    c = server.client()
    for p in PROMPTS:
        r = c.completions.create(model=name, prompt=p, max_tokens=12, temperature=0)
        out.append(r.choices[0].text)
    r = c.chat.completions.create(model=name, max_tokens=8, temperature=0,
                                  messages=[{"role": "user", "content": "the lazy dog"}])
    out.append(r.choices[0].message.content)
    return out


class Ranks(unittest.TestCase):
    def check(self, family, ranks, args, launcher="mpirun"):
        model = serve_lib.make_model(CACHE, family)
        name = os.path.basename(model)
        ref = serve_lib.Reference(model)
        with serve_lib.Server(model) as one:
            want = answers(one, name)
        with serve_lib.Server(model, args, ranks=ranks, launcher=launcher) as many:
            got = answers(many, name)
            text = "paper cranes fold while servers stream " * 12  # > 128 tokens: cut chunks
            self.assertGreater(len(ref.tok(text)["input_ids"]), 128)
            serve_lib.check_echo_logprobs(self, ref, many.client(), name, text)
            self.assertEqual(many.stop(), 0, many.stderr())
        self.assertEqual(got, want, "%s on %d ranks %s" % (family, ranks, args))
        for p, text in zip(PROMPTS, got):
            ids = ref.tok(p)["input_ids"]
            toks, margins = ref.greedy(ids, 12)
            self.assertTrue(text.startswith(ref.text(serve_lib.trusted_prefix(toks, margins))))

    def test_tp2(self):
        self.check("llama", 2, ["--tp", "2"])

    def test_ep2_folded_with_tp2(self):
        self.check("mixtral", 2, ["--tp", "2", "--ep", "2", "--etp", "1"])

    def test_tp2_under_origami_launch(self):
        self.check("llama", 2, ["--tp", "2"], launcher="launch")

    def test_pp2(self):
        self.check("llama", 2, ["--pp", "2"])

    def rank_pids(self, server):
        """{rank: pid} of the rank processes (mpirun's children)."""
        children = subprocess.run(["pgrep", "-P", str(server.proc.pid)], capture_output=True,
                                  text=True).stdout.split()
        self.assertEqual(len(children), 2, children)
        ranks = {}
        for pid in children:
            with open("/proc/%s/environ" % pid, "rb") as f:
                env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
            ranks[int(env[b"OMPI_COMM_WORLD_RANK"])] = int(pid)
        return ranks

    def test_a_rank_that_hangs_fails_the_engine(self):
        model = serve_lib.make_model(CACHE, "llama")
        s = serve_lib.Server(model, ["--tp", "2", "--collective-timeout", "3"], ranks=2)
        with s:
            stuck = self.rank_pids(s)[1]
            os.kill(stuck, signal.SIGSTOP)  # alive, but never reaches its next collective
            try:
                answer = {}
                request = threading.Thread(target=lambda: answer.update(r=serve_lib.post(
                    s.url + "/v1/completions", {"prompt": "hello", "max_tokens": 3})))
                request.start()
                health = []  # (status, body) of /health until the server is gone
                deadline = time.time() + 60
                while s.proc.poll() is None and time.time() < deadline:
                    try:
                        with urllib.request.urlopen(s.url + "/health", timeout=2) as r:
                            health.append((r.status, r.read().decode()))
                    except urllib.error.HTTPError as e:
                        health.append((e.code, e.read().decode()))
                    except OSError:
                        pass  # closed: the job is ending
                    time.sleep(0.1)
                rc = s.proc.wait(30)
                request.join(30)
            finally:
                for sig in (signal.SIGCONT, signal.SIGKILL):
                    try:
                        os.kill(stuck, sig)
                    except ProcessLookupError:
                        pass
            self.assertNotEqual(rc, 0)
            status, _, body = answer["r"]
            self.assertEqual(status, 500, body)
            self.assertEqual(body["error"]["code"], "engine_failed", body)
            self.assertIn("global rank 1", body["error"]["message"])
            self.assertIn((503, '{"status":"engine failed"}'), health, health[-5:])
            self.assertRegex(s.stderr(), r"rank 0: error: the engine failed: .*global rank 1")

    def test_a_rank_that_dies_ends_the_job(self):
        model = serve_lib.make_model(CACHE, "llama")
        s = serve_lib.Server(model, ["--tp", "2", "--collective-timeout", "10"], ranks=2)
        with s:
            # The rank processes are mpirun's children; kill the one that is not rank 0.
            ranks = self.rank_pids(s)
            os.kill(ranks[1], signal.SIGKILL)
            t0 = time.time()
            rc = s.proc.wait(60)
            self.assertNotEqual(rc, 0)
            self.assertLess(time.time() - t0, 60)
            self.assertRegex(s.stderr(), r"rank 1|process rank 1|rank \[1\]|exited on signal 9")


if __name__ == "__main__":
    unittest.main(verbosity=2)
