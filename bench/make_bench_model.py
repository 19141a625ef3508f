"""A small random Llama-style model with a byte-level BPE tokenizer, for the serving benchmark.

    make_bench_model.py OUT_DIR [--hidden 256] [--layers 4] [--heads 8] [--kv-heads 4]
                                [--intermediate 688] [--vocab 4096] [--max-pos 4096] [--seed 0]
                                [--model-vocab N] [--experts E --top-k K] [--dtype float32]

Writes OUT_DIR/config.json, model.safetensors (--dtype: float32, bfloat16 or float16),
generation_config.json, tokenizer.json
(Llama-3 style: Split(Llama-3 regex) + ByteLevel, <|begin_of_text|> template) and
tokenizer_config.json. The weights are random: the benchmark measures speed, not text quality.
--model-vocab pads the model's vocabulary past the tokenizer's (a real model's head size);
--experts makes a Mixtral-style MoE (E experts of --intermediate, top --top-k).
Needs torch, transformers and tokenizers (the repo's .venv: scripts/setup.sh).
"""

import argparse
import glob
import json
import os
import random

LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]


def corpus():
    lines = []
    for path in sorted(glob.glob("/usr/share/games/fortunes/*")):
        if os.path.splitext(path)[1] in (".dat", ".u8") or os.path.isdir(path):
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            lines.extend(f.read(200_000).splitlines())
        if sum(len(l) for l in lines) > 1_000_000:
            break
    rng = random.Random(1234)
    words = ("the of and to in is that for it as was with be by on not he this are or his from "
             "at which but have an they you were her she there can all their has been if more one "
             "model token layer rank gradient tensor pipeline expert server request cache prefix "
             "batch latency throughput kernel memory thread queue stream 2024 3.14 42").split()
    for _ in range(20000):
        lines.append(" ".join(rng.choice(words) for _ in range(rng.randint(4, 16))))
    return lines


def tokenizer(vocab_size):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(pattern=Regex(LLAMA3_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=SPECIALS)
    tok.train_from_iterator(corpus(), trainer=trainer)
    bos = tok.token_to_id(SPECIALS[0])
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                      pair="<|begin_of_text|> $A <|begin_of_text|> $B",
                                      special_tokens=[(SPECIALS[0], bos)])])
    return tok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--intermediate", type=int, default=688)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--max-pos", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model-vocab", type=int, default=0)
    ap.add_argument("--experts", type=int, default=0)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    a = ap.parse_args()

    import torch
    import transformers
    os.makedirs(a.out_dir, exist_ok=True)
    tok = tokenizer(a.vocab)
    vocab = tok.get_vocab_size()
    tok.save(os.path.join(a.out_dir, "tokenizer.json"))
    bos, eos = tok.token_to_id(SPECIALS[0]), tok.token_to_id(SPECIALS[1])
    with open(os.path.join(a.out_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": SPECIALS[0], "eos_token": SPECIALS[1], "add_bos_token": True,
                   "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": a.max_pos,
                   "clean_up_tokenization_spaces": False,
                   "chat_template": ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n"
                                     "{% endfor %}{% if add_generation_prompt %}assistant: "
                                     "{% endif %}")}, f, indent=1)

    common = dict(vocab_size=max(vocab, a.model_vocab), hidden_size=a.hidden,
                  intermediate_size=a.intermediate, num_hidden_layers=a.layers,
                  num_attention_heads=a.heads, num_key_value_heads=a.kv_heads,
                  max_position_embeddings=a.max_pos, rms_norm_eps=1e-5, rope_theta=500000.0,
                  tie_word_embeddings=False, bos_token_id=bos, eos_token_id=eos,
                  initializer_range=0.05)
    torch.manual_seed(a.seed)
    if a.experts:
        cfg = transformers.MixtralConfig(**common, num_local_experts=a.experts,
                                         num_experts_per_tok=a.top_k, sliding_window=None)
        model = transformers.MixtralForCausalLM(cfg)
    else:
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common))
    model = model.to(getattr(torch, a.dtype))
    model.save_pretrained(a.out_dir, safe_serialization=True)
    print("make_bench_model: %s: vocab %d, hidden %d, %d layers, %.1fM parameters"
          % (a.out_dir, max(vocab, a.model_vocab), a.hidden, a.layers,
             sum(p.numel() for p in model.parameters()) / 1e6))


if __name__ == "__main__":
    main()
