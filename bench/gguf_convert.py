"""Runs llama.cpp's convert_hf_to_gguf.py with Debian's torch 1.13 and a tokenizer it may not know.

    gguf_convert.py LLAMA_CPP_DIR [--pre NAME] -- CONVERTER_ARGS...

LLAMA_CPP_DIR holds convert_hf_to_gguf.py and gguf-py/ (the llama.cpp vendored by the
llama-cpp-python source distribution; scripts/setup_bench.sh unpacks it under .bench/).
Before the converter is imported this:
  - gives torch 1.13 the float8 dtype names the converter's safetensors table refers to
    (torch.float8_e4m3fn, torch.float8_e5m2; only Float8 checkpoints would use them);
  - stands in for mistral_common (imported at the top of the converter, used only for Mistral's
    own checkpoint format) when it is not installed;
  - drops "model.layers.{bid}.block_sparse_moe.gate" from the FFN_GATE names of gguf-py's
    tensor map when it is also an FFN_GATE_INP name (this llama.cpp lists it under both, for
    SmallThinker, and the later entry wins: a Mixtral router became ffn_gate and the GGUF failed to
    load with "missing tensor 'blk.0.ffn_gate_inp.weight'");
and, if the BPE tokenizer's pre-tokenizer hash is unknown to the converter (a tokenizer trained
for a test, say), converts with the pre-tokenizer NAME (default llama-bpe: the Llama-3 regex)
instead of stopping. Pick the NAME whose split regex the tokenizer really uses.
"""

import importlib.util
import logging
import os
import sys
import types


def shim_torch():
    import torch
    for name in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz"):
        if not hasattr(torch, name):
            setattr(torch, name, torch.uint8)  # a stand-in for the name: torch 1.13 never produces it
    for name in ("uint16", "uint32", "uint64"):
        if not hasattr(torch, name):
            setattr(torch, name, torch.int64)


def shim_mistral_common():
    try:
        import mistral_common.tokens.tokenizers.tekken  # noqa: F401
        return
    except ImportError:
        pass

    class _Unavailable:
        def __init__(self, *a, **k):
            raise RuntimeError("mistral_common is not installed (gguf_convert.py stands in for it)")

    class TokenizerVersion:
        v1 = v3 = v7 = v11 = v13 = object()

    names = {
        "mistral_common": {},
        "mistral_common.tokens": {},
        "mistral_common.tokens.tokenizers": {},
        "mistral_common.tokens.tokenizers.base": {"TokenizerVersion": TokenizerVersion},
        "mistral_common.tokens.tokenizers.multimodal": {
            "DATASET_MEAN": (0.48145466, 0.4578275, 0.40821073),
            "DATASET_STD": (0.26862954, 0.26130258, 0.27577711)},
        "mistral_common.tokens.tokenizers.tekken": {"Tekkenizer": _Unavailable},
        "mistral_common.tokens.tokenizers.sentencepiece": {"SentencePieceTokenizer": _Unavailable},
    }
    for name, attrs in names.items():
        mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        sys.modules[name] = mod


def main():
    argv = sys.argv[1:]
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 2
    llama_cpp = argv.pop(0)
    pre = "llama-bpe"
    if argv[:1] == ["--pre"]:
        pre = argv[1]
        argv = argv[2:]
    if argv[:1] == ["--"]:
        argv = argv[1:]

    shim_torch()
    shim_mistral_common()
    path = os.path.join(llama_cpp, "convert_hf_to_gguf.py")
    spec = importlib.util.spec_from_file_location("convert_hf_to_gguf", path)
    conv = importlib.util.module_from_spec(spec)
    sys.modules["convert_hf_to_gguf"] = conv
    spec.loader.exec_module(conv)  # puts LLAMA_CPP_DIR/gguf-py on sys.path itself

    import gguf  # the converter's own gguf-py
    block = gguf.tensor_mapping.TensorNameMap.block_mappings_cfg
    router = "model.layers.{bid}.block_sparse_moe.gate"
    gate, gate_inp = gguf.MODEL_TENSOR.FFN_GATE, gguf.MODEL_TENSOR.FFN_GATE_INP
    if router in block.get(gate, ()) and router in block.get(gate_inp, ()):
        block[gate] = tuple(n for n in block[gate] if n != router)

    original = conv.TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self, tokenizer):
        try:
            return original(self, tokenizer)
        except NotImplementedError:
            logging.getLogger("gguf_convert").warning(
                "the converter does not know this BPE pre-tokenizer; converting it as %r", pre)
            return pre

    conv.TextModel.get_vocab_base_pre = get_vocab_base_pre
    sys.argv = [path] + argv
    conv.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
