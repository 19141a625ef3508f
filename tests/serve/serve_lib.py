"""Support of the serving tests: a tiny Hugging Face model with a real byte-level BPE tokenizer and
a ChatML chat template, transformers references, and an `origami serve` process to talk to.

Every reference comes from transformers (float64) or from Python's own tokenizers/jinja2, never
from origami.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "golden"))
import hf_models  # noqa: E402  (tests/golden)

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = ("the quick brown fox jumps over the lazy dog while origami folds paper cranes; "
          "servers answer requests, tokens stream to clients, and models learn from text. ") * 40


def make_model(out_dir, family="llama", context=512):
    """A tiny random `family` model (tests/golden/hf_models.py) saved with a trained byte-level BPE
    tokenizer (vocabulary = the model's) and a ChatML template. Returns the folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    import fcntl
    folder = os.path.join(out_dir, family)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, family + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # tests running side by side build each model once
        if not os.path.exists(os.path.join(folder, "done")):
            _build_model(folder, family, context)
    return folder


def _build_model(folder, family, context):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    os.makedirs(folder, exist_ok=True)
    cls, cfg = hf_models.build(family)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=cfg.vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([CORPUS], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>")
    fast.chat_template = CHATML
    fast.save_pretrained(folder)
    eos = fast.convert_tokens_to_ids("<|im_end|>")
    cfg.eos_token_id = eos
    cfg.bos_token_id = None
    cfg.max_position_embeddings = context
    cfg._attn_implementation = "eager"
    if hasattr(cfg, "output_router_logits"):
        cfg.output_router_logits = False
    torch.manual_seed(1234)
    model = cls(cfg).float()
    hf_models.perturb(model)  # as hf_models.py
    model.save_pretrained(folder, safe_serialization=True)
    with open(os.path.join(folder, "done"), "w") as f:
        f.write("ok\n")


class Reference:
    """transformers' model (float64) and tokenizer for a folder made by make_model."""

    def __init__(self, folder):
        from transformers import AutoModelForCausalLM, AutoTokenizer
        self.tok = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float64,
                                                          attn_implementation="eager")
        self.model.eval()
        self.eos = self.model.config.eos_token_id

    def greedy(self, ids, max_new_tokens):
        """Greedy tokens (an EOS ends them, included) and the top-1 minus top-2 margin of each."""
        torch.set_default_dtype(torch.float64)
        try:
            prompt = torch.tensor([ids])
            with torch.no_grad():
                out = self.model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt),
                                          do_sample=False, max_new_tokens=max_new_tokens,
                                          pad_token_id=self.eos, eos_token_id=self.eos,
                                          output_scores=True, return_dict_in_generate=True)
        finally:
            torch.set_default_dtype(torch.float32)
        tokens = out.sequences[0, len(ids):].tolist()
        margins = [float(torch.topk(s[0], 2).values[0] - torch.topk(s[0], 2).values[1])
                   for s in out.scores]
        return tokens, margins

    def logprobs(self, ids, new_tokens):
        """log-softmax rows of the positions that predicted each of new_tokens."""
        torch.set_default_dtype(torch.float64)
        try:
            with torch.no_grad():
                logits = self.model(input_ids=torch.tensor([ids + new_tokens])).logits[0]
        finally:
            torch.set_default_dtype(torch.float32)
        rows = torch.log_softmax(logits, dim=-1)[len(ids) - 1:len(ids) - 1 + len(new_tokens)]
        return rows

    def text(self, tokens):
        return self.tok.decode([t for t in tokens if t != self.eos], skip_special_tokens=True)


def trusted_prefix(tokens, margins, tie=1e-3):
    """The tokens before the first near-tie (where float32 and float64 may pick differently)."""
    for i, m in enumerate(margins):
        if m < tie:
            return tokens[:i]
    return tokens


def check_echo_logprobs(test, ref, client, name, text, max_tokens=3, tol=1e-4):
    """A completion with echo and logprobs: the prompt's tokens (transformers' tokenizer) with
    transformers' log-probabilities and top 2 (the first token has none), then the same tokens,
    log-probabilities and text as the request without echo. Returns the prompt's
    log-probabilities."""
    ids = ref.tok(text)["input_ids"]
    P = len(ids)
    got = client.completions.create(model=name, prompt=text, max_tokens=max_tokens,
                                    temperature=0, echo=True, logprobs=2).choices[0]
    lp = got.logprobs
    test.assertEqual(lp.tokens[:P], [ref.tok.decode([t]) for t in ids])
    test.assertIsNone(lp.token_logprobs[0])
    test.assertIsNone(lp.top_logprobs[0])
    rows = ref.logprobs(ids[:1], ids[1:])  # rows[i]: the position that predicts ids[i + 1]
    for i in range(1, P):
        row = rows[i - 1]
        test.assertAlmostEqual(lp.token_logprobs[i], float(row[ids[i]]), delta=tol, msg=i)
        values, top = torch.topk(row, 3)
        want = {}
        for v, t in zip(values.tolist()[:2], top.tolist()[:2]):
            want.setdefault(ref.tok.decode([t]), v)
        if float(values[1] - values[2]) > 1e-3:  # no near-tie for second place
            test.assertEqual(set(lp.top_logprobs[i]), set(want), i)
        for k, v in want.items():
            if k in lp.top_logprobs[i]:
                test.assertAlmostEqual(lp.top_logprobs[i][k], v, delta=tol)
    test.assertEqual(lp.text_offset[0], 0)
    plain = client.completions.create(model=name, prompt=text, max_tokens=max_tokens,
                                      temperature=0, logprobs=2).choices[0]
    test.assertEqual(got.text, text + plain.text)
    test.assertEqual(lp.tokens[P:], plain.logprobs.tokens)
    for a, b in zip(lp.token_logprobs[P:], plain.logprobs.token_logprobs):
        test.assertAlmostEqual(a, b, delta=tol)
    test.assertEqual(lp.text_offset[P], len(text))
    return lp.token_logprobs[:P]


def origami_binary():
    return os.environ.get("ORIGAMI_BIN", os.path.join(HERE, "..", "..", "build", "bin", "origami"))


def mpi_env():
    env = dict(os.environ)
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMP_NUM_THREADS="1",
               OMPI_MCA_rmaps_base_oversubscribe="1")
    return env


class Server:
    """`origami serve MODEL ARGS` on 127.0.0.1 and a free port (or under mpirun with ranks > 1);
    waits until /health says ok. Use as a context manager; stop() sends SIGTERM."""

    def __init__(self, model, args=(), ranks=1, api_key=None, timeout=240, env=None,
                 launcher="mpirun"):
        self.ranks = ranks
        self.launcher = launcher
        cmd = [origami_binary(), "serve", model, "--port", "0", "--host", "127.0.0.1"] + list(args)
        if api_key:
            cmd += ["--api-key", api_key]
        if ranks > 1 and launcher == "launch":  # origami launch: ranks under its supervisor
            cmd = [origami_binary(), "launch", "-n", str(ranks), "--"] + cmd[1:]
        elif ranks > 1:
            cmd = [os.environ.get("MPIEXEC", "mpirun"), "--oversubscribe", "-np", str(ranks)] + cmd
        self.log = open(os.path.join(os.environ.get("TMPDIR", "/tmp"),
                                     "origami_serve_%d_%d.log" % (os.getpid(), time.time_ns())),
                        "w+")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     env={**mpi_env(), **(env or {})}, start_new_session=True)
        self.port = None
        deadline = time.time() + timeout
        for line in self.proc.stdout:
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)  # [r0] under launch
            if m:
                self.port = int(m.group(1))
                break
        if self.port is None:
            raise RuntimeError("origami serve did not start:\n" + self.stderr())
        self.lines = []
        import threading
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.url = "http://127.0.0.1:%d" % self.port
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("origami serve ended:\n" + self.stderr())
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.2)
        raise RuntimeError("origami serve was not ready in %d s" % timeout)

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)

    def stderr(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def client(self, api_key="none", **kw):
        import openai
        return openai.OpenAI(base_url=self.url + "/v1", api_key=api_key, max_retries=0, **kw)

    def metrics(self):
        """GET /metrics parsed into {(name, frozenset(labels)): value}."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$', line)
            assert m, "bad metrics line: " + line
            labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
            out[(m.group(1), labels)] = float(m.group(4))
        return out

    def metric(self, name, **labels):
        total = None
        for (n, ls), v in self.metrics().items():
            if n == name and all((k, str(val)) in ls for k, val in labels.items()):
                total = (total or 0.0) + v
        return total

    def stop(self, sig=None, timeout=90):
        """Drains the server (SIGTERM; under mpirun SIGUSR1, which mpirun forwards to the ranks)
        and returns its exit status."""
        if sig is None:
            sig = signal.SIGUSR1 if self.ranks > 1 and self.launcher == "mpirun" else signal.SIGTERM
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(30)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def post(url, body, headers=None, raw=None, timeout=30):
    """POST JSON (or raw bytes); returns (status, headers, parsed JSON or text)."""
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, hdrs, text = r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        status, hdrs, text = e.code, dict(e.headers), e.read().decode()
    try:
        return status, hdrs, json.loads(text)
    except json.JSONDecodeError:
        return status, hdrs, text
