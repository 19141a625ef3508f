#!/usr/bin/env python3
"""A stand-in OpenAI-compatible streaming server, to try serve_load.py and bench_serve.sh without
a model: mock_openai_server.py [--port 8090] [--ttft-ms 20] [--tpot-ms 5].

Streams max_tokens chunks of one word each (chunked SSE), with a usage chunk when
stream_options.include_usage is set; serves /health, /v1/models and a /metrics with
origami:prefix_cache_hit_rate (the share of prompt tokens seen in an earlier prompt's prefix).
"""

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

state = {"lock": threading.Lock(), "seen": set(), "hit": 0, "total": 0}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def send_json(self, code, obj, ctype="application/json"):
        data = (obj if isinstance(obj, str) else json.dumps(obj)).encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/health":
            self.send_json(200, {"status": "ok"})
        elif self.path == "/v1/models":
            self.send_json(200, {"object": "list", "data": [{"id": "mock", "object": "model",
                                                             "meta": {"n_vocab": 4096}}]})
        elif self.path == "/metrics":
            with state["lock"]:
                rate = state["hit"] / state["total"] if state["total"] else 0.0
            self.send_json(200, "# TYPE origami:prefix_cache_hit_rate gauge\n"
                                "origami:prefix_cache_hit_rate %f\n" % rate, "text/plain")
        else:
            self.send_json(404, {"error": {"message": "not found"}})

    def chunk(self, obj):
        data = ("data: %s\n\n" % (obj if isinstance(obj, str) else json.dumps(obj))).encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        chat = self.path == "/v1/chat/completions"
        if self.path not in ("/v1/completions", "/v1/chat/completions"):
            return self.send_json(404, {"error": {"message": "not found"}})
        if chat:
            prompt = " ".join(m["content"] for m in body["messages"]).split()
        else:
            prompt = body["prompt"] if isinstance(body["prompt"], list) else body["prompt"].split()
        with state["lock"]:  # prefix hits, in blocks of 16 units
            for i in range(16, len(prompt) + 1, 16):
                key = tuple(prompt[:i])
                state["total"] += 16
                if key in state["seen"]:
                    state["hit"] += 16
                state["seen"].add(key)
        n = int(body.get("max_tokens", 16))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        time.sleep(ARGS.ttft_ms / 1000)
        for i in range(n):
            if i:
                time.sleep(ARGS.tpot_ms / 1000)
            choice = ({"index": 0, "delta": {"content": " w%d" % i}, "finish_reason": None}
                      if chat else {"index": 0, "text": " w%d" % i, "finish_reason": None})
            self.chunk({"choices": [choice]})
        if (body.get("stream_options") or {}).get("include_usage"):
            self.chunk({"choices": [], "usage": {"prompt_tokens": len(prompt),
                                                 "completion_tokens": n,
                                                 "total_tokens": n + len(prompt)}})
        self.chunk("[DONE]")
        self.wfile.write(b"0\r\n\r\n")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8090)
    ap.add_argument("--ttft-ms", type=float, default=20)
    ap.add_argument("--tpot-ms", type=float, default=5)
    ARGS = ap.parse_args()
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer.handle_error = lambda *a: None  # clients closing keep-alive sockets
    ThreadingHTTPServer((ARGS.host, ARGS.port), Handler).serve_forever()
