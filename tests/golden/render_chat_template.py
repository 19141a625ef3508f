"""Renders chat templates with jinja2 exactly as Hugging Face transformers does, for the golden
tests of runtime/chat_template.h.

    python render_chat_template.py CASES.json OUT.json

CASES.json: a list of {"template": text, "messages": [...], "add_generation_prompt": bool,
"extra": {...}}. OUT.json: one entry per case, {"output": text} or {"error": message,
"type": exception class name}. Everything runs in this one process.

The environment is transformers' (tokenization_utils_base / chat_template_utils, 4.4x and later):
an ImmutableSandboxedEnvironment with trim_blocks, lstrip_blocks and the loopcontrols extension,
the globals raise_exception and strftime_now, tojson replaced by a json.dumps that keeps
non-ASCII text and key order, and render(messages=..., tools=None, documents=None,
add_generation_prompt=..., **special tokens and extra kwargs). The {% generation %} tag of
transformers' assistant-mask tracker is accepted and renders its body.
"""

import json
import sys
from datetime import datetime

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment


class GenerationTag(jinja2.ext.Extension):
    """{% generation %}...{% endgeneration %}: renders the body (transformers records where
    assistant text is; rendering is unchanged)."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return jinja2.nodes.Scope(body, lineno=lineno)


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def strftime_now(format):
    return datetime.now().strftime(format)


def environment():
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def render(env, compiled, case):
    source = case["template"]
    if source not in compiled:  # compiling is most of the time: once per template text
        compiled[source] = env.from_string(source)
    template = compiled[source]
    kwargs = dict(case.get("extra") or {})
    tools = kwargs.pop("tools", None)
    documents = kwargs.pop("documents", None)
    return template.render(messages=case["messages"], tools=tools, documents=documents,
                           add_generation_prompt=case["add_generation_prompt"], **kwargs)


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        cases = json.load(f)
    env = environment()
    compiled = {}
    results = []
    for case in cases:
        try:
            results.append({"output": render(env, compiled, case)})
        except Exception as e:  # noqa: BLE001 - every failure is a result to compare
            results.append({"error": str(e), "type": type(e).__name__})
    with open(sys.argv[2], "w", encoding="utf-8") as f:
        json.dump(results, f, ensure_ascii=False)


if __name__ == "__main__":
    main()
