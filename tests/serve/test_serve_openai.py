"""origami serve with the official `openai` client, against transformers (float64) references.

    test_openai.py            (ORIGAMI_BIN: the origami binary; default build/bin/origami)

One server on one rank serves a tiny Llama with a real byte-level BPE tokenizer and a ChatML
template (serve_lib.make_model). Tolerances: greedy tokens equal up to the first near-tie
(top-1 minus top-2 logit below 1e-3 in float64); log-probabilities within 1e-4.
"""

import json
import os
import subprocess
import tempfile
import unittest
import urllib.request

import openai
import torch

import serve_lib

MODEL = None
REF = None
SERVER = None


def setUpModule():
    global MODEL, REF, SERVER
    cache = os.environ.get("ORIGAMI_SERVE_MODELS") or tempfile.mkdtemp(prefix="origami_serve_")
    MODEL = serve_lib.make_model(cache, "llama")
    REF = serve_lib.Reference(MODEL)
    SERVER = serve_lib.Server(MODEL, ["--max-num-seqs", "8", "--max-num-batched-tokens", "64"])


def tearDownModule():
    if SERVER:
        rc = SERVER.stop()
        SERVER.__exit__()
        assert rc == 0, "origami serve exited %s after SIGTERM:\n%s" % (rc, SERVER.stderr())


def prompt_ids(text):
    return REF.tok(text, add_special_tokens=True)["input_ids"]


class Completions(unittest.TestCase):
    def test_model_list(self):
        models = SERVER.client().models.list().data
        self.assertEqual([m.id for m in models], [os.path.basename(MODEL)])

    def test_greedy_equals_transformers(self):
        c = SERVER.client()
        for text in ["the quick brown", "servers answer requests, tokens", "x"]:
            ids = prompt_ids(text)
            want, margins = REF.greedy(ids, 12)
            trusted = serve_lib.trusted_prefix(want, margins)
            got = c.completions.create(model=os.path.basename(MODEL), prompt=text, max_tokens=12,
                                       temperature=0)
            self.assertEqual(got.usage.prompt_tokens, len(ids), "tokenization differs")
            self.assertTrue(got.choices[0].text.startswith(REF.text(trusted)),
                            "%r vs transformers %r" % (got.choices[0].text, REF.text(want)))
            if len(trusted) == len(want):
                self.assertEqual(got.choices[0].text, REF.text(want))
                self.assertEqual(got.usage.completion_tokens, len(want))
                self.assertEqual(got.choices[0].finish_reason,
                                 "stop" if want[-1] == REF.eos else "length")
            # The same prompt as token ids.
            by_ids = c.completions.create(model=os.path.basename(MODEL), prompt=ids,
                                          max_tokens=12, temperature=0)
            self.assertEqual(by_ids.choices[0].text, got.choices[0].text)

    def test_batch_of_prompts_and_echo(self):
        c = SERVER.client()
        texts = ["the lazy dog", "paper cranes"]
        got = c.completions.create(model=os.path.basename(MODEL), prompt=texts, max_tokens=6,
                                   temperature=0, echo=True)
        self.assertEqual(sorted(ch.index for ch in got.choices), [0, 1])
        for ch in got.choices:
            self.assertTrue(ch.text.startswith(texts[ch.index]))
            alone = c.completions.create(model=os.path.basename(MODEL), prompt=texts[ch.index],
                                         max_tokens=6, temperature=0)
            self.assertEqual(ch.text, texts[ch.index] + alone.choices[0].text)

    def test_logprobs_equal_transformers(self):
        ids = prompt_ids("models learn from")
        got = SERVER.client().completions.create(model=os.path.basename(MODEL), prompt=ids,
                                                 max_tokens=6, temperature=0, logprobs=3)
        lp = got.choices[0].logprobs
        toks, margins = REF.greedy(ids, 6)
        n = len(serve_lib.trusted_prefix(toks, margins))
        rows = REF.logprobs(ids, toks[:n])
        for i in range(n):
            self.assertAlmostEqual(lp.token_logprobs[i], float(rows[i, toks[i]]), delta=1e-4)
            # The 3 most likely tokens by their text (tokens with the same text, such as pieces
            # of one UTF-8 character, share an entry: the first, most likely, stays).
            want_top = {}
            values, ids_ = torch.topk(rows[i], 3)
            for v, t in zip(values.tolist(), ids_.tolist()):
                want_top.setdefault(REF.tok.decode([t]), v)
            self.assertEqual(set(lp.top_logprobs[i]), set(want_top))
            for k, v in want_top.items():
                self.assertAlmostEqual(lp.top_logprobs[i][k], v, delta=1e-4)
            self.assertEqual(lp.tokens[i], REF.tok.decode([toks[i]]))

    def test_echo_with_logprobs_scores_the_prompt(self):
        c = SERVER.client()
        name = os.path.basename(MODEL)
        long_text = "paper cranes fold while servers stream " * 12
        self.assertGreater(len(prompt_ids(long_text)), 64)  # more than one step's tokens
        for text in ["models learn from", long_text]:
            serve_lib.check_echo_logprobs(self, REF, c, name, text)
        # max_tokens 0: the prompt alone, scored.
        got = c.completions.create(model=name, prompt="models learn from", max_tokens=0,
                                   echo=True, logprobs=1)
        self.assertEqual(got.choices[0].text, "models learn from")
        self.assertEqual(got.choices[0].finish_reason, "length")
        self.assertEqual(got.usage.completion_tokens, 0)
        self.assertEqual(len(got.choices[0].logprobs.tokens), len(prompt_ids("models learn from")))
        # Two samples, streamed: each choice's chunks add up to the whole answer.
        kw = dict(model=name, prompt="the lazy dog", max_tokens=4, temperature=0.8, seed=7,
                  echo=True, logprobs=1, n=2)
        whole = {ch.index: ch for ch in c.completions.create(**kw).choices}
        text, tokens, values = {}, {}, {}
        for chunk in c.completions.create(stream=True, **kw):
            for ch in chunk.choices:
                text[ch.index] = text.get(ch.index, "") + ch.text
                if ch.logprobs:
                    tokens.setdefault(ch.index, []).extend(ch.logprobs.tokens)
                    values.setdefault(ch.index, []).extend(ch.logprobs.token_logprobs)
        self.assertEqual(sorted(text), [0, 1])
        for i, ch in whole.items():
            self.assertTrue(ch.text.startswith("the lazy dog"))
            self.assertEqual(text[i], ch.text)
            self.assertEqual(tokens[i], ch.logprobs.tokens)
            self.assertEqual(values[i][0], None)
            for a, b in zip(values[i][1:], ch.logprobs.token_logprobs[1:]):
                self.assertAlmostEqual(a, b, delta=1e-4)

    def test_stop_strings_never_emitted(self):
        c = SERVER.client()
        full = c.completions.create(model=os.path.basename(MODEL), prompt="the quick",
                                    max_tokens=16, temperature=0).choices[0].text
        self.assertGreater(len(full), 8)
        stop = full[4:7]  # likely spans a token boundary
        cut = full[:full.index(stop)]
        got = c.completions.create(model=os.path.basename(MODEL), prompt="the quick",
                                   max_tokens=16, temperature=0, stop=[stop, "never-seen"])
        self.assertEqual(got.choices[0].text, cut)
        self.assertEqual(got.choices[0].finish_reason, "stop")
        streamed = "".join(ch.choices[0].text for ch in c.completions.create(
            model=os.path.basename(MODEL), prompt="the quick", max_tokens=16, temperature=0,
            stop=stop, stream=True) if ch.choices)
        self.assertEqual(streamed, cut)

    def test_seeded_sampling_is_reproducible_and_n_samples(self):
        c = SERVER.client()
        kw = dict(model=os.path.basename(MODEL), prompt="origami folds", max_tokens=10,
                  temperature=1.0, top_p=0.9)
        a = c.completions.create(seed=42, **kw).choices[0].text
        b = c.completions.create(seed=42, **kw).choices[0].text
        self.assertEqual(a, b)
        # n samples: sample i draws as the same request with seed + i alone.
        many = c.completions.create(seed=42, n=3, **kw)
        self.assertEqual(sorted(ch.index for ch in many.choices), [0, 1, 2])
        for ch in many.choices:
            alone = c.completions.create(seed=42 + ch.index, **kw).choices[0].text
            self.assertEqual(ch.text, alone)
        self.assertEqual(many.usage.prompt_tokens, len(prompt_ids("origami folds")))

    def test_penalties_equal_a_naive_loop(self):
        ids = prompt_ids("the quick brown fox")
        got = SERVER.client().completions.create(
            model=os.path.basename(MODEL), prompt=ids, max_tokens=8, temperature=0,
            presence_penalty=0.7, frequency_penalty=1.3)
        # Greedy with OpenAI's penalties over the generated tokens, on transformers' logits.
        seq, out = list(ids), []
        torch.set_default_dtype(torch.float64)
        with torch.no_grad():
            for _ in range(8):
                logits = REF.model(input_ids=torch.tensor([seq])).logits[0, -1].clone()
                for t in set(out):
                    logits[t] -= 0.7 + 1.3 * out.count(t)
                top2 = torch.topk(logits, 2).values
                if float(top2[0] - top2[1]) < 1e-3:
                    break
                nxt = int(torch.argmax(logits))
                out.append(nxt)
                seq.append(nxt)
                if nxt == REF.eos:
                    break
        torch.set_default_dtype(torch.float32)
        self.assertTrue(got.choices[0].text.startswith(REF.text(out)))


class Chat(unittest.TestCase):
    MESSAGES = [{"role": "system", "content": "You fold paper."},
                {"role": "user", "content": "the quick brown fox"},
                {"role": "assistant", "content": "jumps over"},
                {"role": "user", "content": "the lazy dog"}]

    def test_chat_equals_transformers_template_and_generate(self):
        ids = REF.tok.apply_chat_template(self.MESSAGES, add_generation_prompt=True)
        want, margins = REF.greedy(ids, 10)
        trusted = serve_lib.trusted_prefix(want, margins)
        got = SERVER.client().chat.completions.create(model=os.path.basename(MODEL),
                                                      messages=self.MESSAGES, max_tokens=10,
                                                      temperature=0)
        self.assertEqual(got.usage.prompt_tokens, len(ids), "chat template or tokenizer differs")
        self.assertEqual(got.choices[0].message.role, "assistant")
        self.assertTrue(got.choices[0].message.content.startswith(REF.text(trusted)))

    def test_stream_with_usage_equals_whole_answer(self):
        c = SERVER.client()
        whole = c.chat.completions.create(model=os.path.basename(MODEL), messages=self.MESSAGES,
                                          max_tokens=10, temperature=0)
        chunks = list(c.chat.completions.create(
            model=os.path.basename(MODEL), messages=self.MESSAGES, max_tokens=10, temperature=0,
            stream=True, stream_options={"include_usage": True}))
        self.assertEqual(chunks[0].choices[0].delta.role, "assistant")
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        self.assertEqual(text, whole.choices[0].message.content)
        self.assertEqual(chunks[-1].choices, [])
        self.assertEqual(chunks[-1].usage.completion_tokens, whole.usage.completion_tokens)
        self.assertEqual(chunks[-1].usage.prompt_tokens, whole.usage.prompt_tokens)
        finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices]
        self.assertEqual(finishes[-1], whole.choices[0].finish_reason)

    def test_chat_logprobs(self):
        ids = REF.tok.apply_chat_template(self.MESSAGES, add_generation_prompt=True)
        got = SERVER.client().chat.completions.create(
            model=os.path.basename(MODEL), messages=self.MESSAGES, max_tokens=4, temperature=0,
            logprobs=True, top_logprobs=2)
        content = got.choices[0].logprobs.content
        toks, _ = REF.greedy(ids, 4)
        rows = REF.logprobs(ids, toks[:len(content)])
        for i, entry in enumerate(content):
            self.assertAlmostEqual(entry.logprob, float(rows[i, toks[i]]), delta=1e-4)
            self.assertEqual(len(entry.top_logprobs), 2)


class Errors(unittest.TestCase):
    def status(self, body, raw=None, path="/v1/completions"):
        return serve_lib.post(SERVER.url + path, body, raw=raw)

    def test_bad_requests_are_4xx_naming_the_field(self):
        base = {"prompt": "the quick", "max_tokens": 4}
        cases = [
            ({"max_tokens": 0}, "max_tokens"),
            ({"temperature": -1}, "temperature"),
            ({"top_p": 0}, "top_p"),
            ({"top_k": -2}, "top_k"),
            ({"presence_penalty": 2.5}, "presence_penalty"),
            ({"frequency_penalty": -3}, "frequency_penalty"),
            ({"n": 0}, "n"),
            ({"stop": [""]}, "stop"),
            ({"max_tokens": "four"}, "max_tokens"),
            ({"max_tokens": 100000}, "max_tokens"),
            ({"prompt": [1, 2, 99999]}, "prompt"),
        ]
        for extra, field in cases:
            status, _, body = self.status({**base, **extra})
            self.assertEqual(status, 400, (extra, body))
            self.assertTrue(body["error"]["param"].startswith(field), (extra, body))
            self.assertIn("message", body["error"])
        status, _, body = self.status({**base, "model": "no-such-model"})
        self.assertEqual(status, 404)
        self.assertEqual(body["error"]["code"], "model_not_found")
        status, _, body = self.status(None, raw=b'{"prompt": "x", ')
        self.assertEqual(status, 400)
        status, _, body = self.status(None, raw=b'{"prompt": "' + b"a" * (5 << 20) + b'"}')
        self.assertEqual(status, 413)
        status, _, body = self.status({"messages": []}, path="/v1/chat/completions")
        self.assertEqual((status, body["error"]["param"]), (400, "messages"))
        status, _, _ = self.status({}, path="/v1/nothing")
        self.assertEqual(status, 404)
        long_prompt = "the quick brown fox " * 400
        with self.assertRaises(openai.BadRequestError):
            SERVER.client().completions.create(model=os.path.basename(MODEL), prompt=long_prompt,
                                               max_tokens=4)

    def test_health_and_metrics(self):
        with urllib.request.urlopen(SERVER.url + "/health", timeout=10) as r:
            self.assertEqual((r.status, json.loads(r.read())["status"]), (200, "ok"))
        SERVER.client().completions.create(model=os.path.basename(MODEL), prompt="fox",
                                           max_tokens=3, temperature=0)
        self.assertGreaterEqual(SERVER.metric("origami:request_success_total"), 1)
        self.assertGreaterEqual(SERVER.metric("origami:prompt_tokens_total"), 1)
        self.assertGreaterEqual(SERVER.metric("origami:generation_tokens_total"), 3)
        self.assertGreaterEqual(SERVER.metric("origami:time_to_first_token_seconds_count"), 1)
        self.assertIsNotNone(SERVER.metric("origami:kv_cache_usage_perc"))
        self.assertIsNotNone(SERVER.metric("origami:num_requests_running"))


class GoldenFamilies(unittest.TestCase):
    """Each golden family through the server equals transformers and `origami generate`."""

    def test_server_equals_transformers_and_origami_generate(self):
        cache = os.path.dirname(MODEL)
        for family in ("llama", "mixtral", "qwen2_moe"):
            model = serve_lib.make_model(cache, family)
            ref = REF if family == "llama" else serve_lib.Reference(model)
            with serve_lib.Server(model) as s:
                for text in ["the quick brown", "paper cranes fold"]:
                    got = s.client().completions.create(model=family, prompt=text, max_tokens=12,
                                                        temperature=0).choices[0].text
                    toks, margins = ref.greedy(ref.tok(text)["input_ids"], 12)
                    self.assertTrue(
                        got.startswith(ref.text(serve_lib.trusted_prefix(toks, margins))),
                        "%s: %r vs transformers %r" % (family, got, ref.text(toks)))
                    gen = subprocess.run(
                        [serve_lib.origami_binary(), "generate", "--model", model, "--prompt", text,
                         "--temperature", "0", "--max-new-tokens", "12", "--no-stream",
                         "--no-stats"], capture_output=True, env=serve_lib.mpi_env(), timeout=300)
                    self.assertEqual(gen.returncode, 0, gen.stderr)
                    # Raw bytes (a random model's text may hold broken UTF-8, which the JSON
                    # answer carries as U+FFFD).
                    self.assertEqual(gen.stdout.decode(errors="replace"), text + got + "\n",
                                     family)


class ApiKey(unittest.TestCase):
    def test_key_refused_and_accepted(self):
        with serve_lib.Server(MODEL, api_key="sekrit-key") as s:
            with self.assertRaises(openai.AuthenticationError):
                s.client(api_key="wrong").models.list()
            self.assertEqual(len(s.client(api_key="sekrit-key").models.list().data), 1)
            out = s.client(api_key="sekrit-key").completions.create(
                model=os.path.basename(MODEL), prompt="fox", max_tokens=2, temperature=0)
            self.assertEqual(len(out.choices), 1)
            with urllib.request.urlopen(s.url + "/health", timeout=10) as r:  # no key needed
                self.assertEqual(r.status, 200)


if __name__ == "__main__":
    unittest.main(verbosity=2)
