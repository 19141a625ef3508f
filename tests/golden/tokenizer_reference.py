"""Reference ids for the tokenizer tests, from the Hugging Face `tokenizers` library.

    tokenizer_reference.py TEXTS_JSON OUT_DIR

Trains small tokenizers offline (on the fortunes corpus when installed, plus generated text), saves
them into OUT_DIR, encodes every text of TEXTS_JSON (a JSON list of strings) followed by 500 more
(corpus lines and random strings over a mixed character pool) with `tokenizers`, and writes
OUT_DIR/reference.json:

    {"texts": [the given texts, then the extra ones],
     "cases": [{"name", "kind": "bpe" | "sentencepiece", "file",
                "ids": [[...] per text, no special tokens],
                "ids_special": [[...] per text, with the post-processor's special tokens] (bpe),
                "decoded": [text per text, decode of "ids"] (bpe),
                "expected_roundtrip": [text, or null where it does not round-trip, per text],
                "scores": [score per id] (sentencepiece: Viterbi ties may be broken either way) }]}

Cases:
  gpt2         ByteLevel pre-tokenizer with GPT-2's regex; <|endoftext|>, <|pad|>, <mask> (lstrip).
  gpt2_prefix  the same model with ByteLevel add_prefix_space = true.
  llama3       Split(Llama-3 regex, Isolated) + ByteLevel(use_regex=false), BOS template;
               merges written in the [a, b] pair form (read by origami, computed here in "a b").
  llama3_ignore_merges  llama3 with model.ignore_merges = true and a few whole words added to
               the vocabulary (tokenizers >= 0.19 only).
  qwen2        Split(Qwen2 regex, Isolated) + ByteLevel(use_regex=false), no template.
  qwen2_nfc    qwen2 with an NFC normalizer (as Qwen2 ships).
  spm_unigram  a SentencePiece .model file (protobuf written by hand below) from a Unigram model
               trained by `tokenizers`, with byte fallback; the reference is `tokenizers`' own
               Unigram on the same pieces and scores.
  spm_bpe      a SentencePiece BPE .model (Llama-2 style) from a BPE trained by `tokenizers`; the
               reference is `tokenizers`' BPE with merges derived from the pieces.
"""

import glob
import json
import os
import random
import re
import struct
import sys
import unicodedata

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from tokenizers import processors, trainers

LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
               r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def corpus():
    """About 120 kB of text: fortunes when installed, plus generated multilingual lines."""
    lines = []
    for path in sorted(glob.glob("/usr/share/games/fortunes/*")):
        if os.path.splitext(path)[1] in (".dat", ".u8") or os.path.isdir(path):
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            lines.extend(f.read(20_000).splitlines())
        if sum(len(l) for l in lines) > 60_000:
            break
    rng = random.Random(1234)
    words = ["the", "model", "token", "layer", "rank", "gradient", "tensor", "pipeline", "expert",
             "naïve", "café", "Straße", "über", "déjà", "vu", "日本語", "中文", "学习", "模型",
             "мир", "привет", "שלום", "مرحبا", "🙂", "🚀", "x²", "Ω", "I'm", "you're", "it's",
             "we'll", "they've", "don't", "He'd", "3.14159", "2024", "1234567890", "0x1F",
             "def", "return", "{", "}", "(", ")", "==", "+=", "->", "//", "#"]
    for _ in range(1500):
        n = rng.randint(3, 12)
        sep = rng.choice([" ", " ", " ", "  ", "\t", ", ", ". "])
        lines.append(sep.join(rng.choice(words) for _ in range(n)))
    return lines


def metaspace():
    try:  # tokenizers >= 0.19
        return pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    except TypeError:
        return pre_tokenizers.Metaspace(replacement="▁", add_prefix_space=True)


def train_bpe(lines, pre_tokenizer, special_tokens, vocab_size=1000):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=special_tokens)
    tok.train_from_iterator(lines, trainer=trainer)
    return tok


def bpe_case(name, tok, out_dir, texts, rewrite=None):
    """Saves tok, computes the reference on the saved file, then optionally rewrites the file
    (same model, different spelling) for origami to read."""
    path = os.path.join(out_dir, name, "tokenizer.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tok.save(path)
    ref = Tokenizer.from_file(path)
    ids = [ref.encode(t, add_special_tokens=False).ids for t in texts]
    case = {
        "name": name, "kind": "bpe", "file": path, "ids": ids,
        "ids_special": [ref.encode(t, add_special_tokens=True).ids for t in texts],
        "decoded": [ref.decode(i, skip_special_tokens=False) for i in ids],
        "expected_roundtrip": [expected_roundtrip(name, t) for t in texts],
    }
    if rewrite is not None:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        rewrite(data)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(data, f, ensure_ascii=False)
    return case


def expected_roundtrip(name, text):
    """What decode(encode(text)) gives, worked out without `tokenizers`; None when the case
    does not round-trip by design (add_prefix_space adds a space to every piece)."""
    if name == "gpt2_prefix":
        return None
    if name == "gpt2":  # <mask> is an lstrip token: it swallows the whitespace before it
        text = re.sub(r"\s+<mask>", "<mask>", text)
    if name.endswith("_nfc"):
        text = unicodedata.normalize("NFC", text)
    return text


def modified(tok, change):
    data = json.loads(tok.to_str())
    change(data)
    return Tokenizer.from_str(json.dumps(data))


# ---- SentencePiece model file, written with the protobuf wire format by hand ---------------

def _varint(n):
    n &= (1 << 64) - 1  # negative int32 values are sign-extended to 64 bits
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field_varint(field, value):
    return _varint(field << 3 | 0) + _varint(value)


def _field_bytes(field, data):
    return _varint(field << 3 | 2) + _varint(len(data)) + data


def _field_float(field, value):
    return _varint(field << 3 | 5) + struct.pack("<f", value)


NORMAL, UNKNOWN, CONTROL, BYTE = 1, 2, 3, 6


def sentencepiece_model_bytes(pieces, model_type):
    """pieces: list of (piece, score, type). sentencepiece_model.proto: ModelProto{pieces = 1,
    trainer_spec = 2, normalizer_spec = 3}; SentencePiece{piece = 1, score = 2, type = 3}."""
    out = bytearray()
    for piece, score, kind in pieces:
        msg = _field_bytes(1, piece.encode("utf-8")) + _field_float(2, score) + _field_varint(3, kind)
        out += _field_bytes(1, msg)
    trainer = (_field_varint(3, model_type)       # 1 = UNIGRAM, 2 = BPE
               + _field_varint(4, len(pieces))    # vocab_size
               + _field_varint(35, 1)             # byte_fallback
               + _field_varint(40, 0)             # unk_id
               + _field_varint(41, 1)             # bos_id
               + _field_varint(42, 2)             # eos_id
               + _field_varint(43, -1))           # pad_id
    normalizer = (_field_bytes(1, b"identity")    # name; no precompiled_charsmap: no mapping
                  + _field_varint(3, 1)           # add_dummy_prefix
                  + _field_varint(4, 0)           # remove_extra_whitespaces = false
                  + _field_varint(5, 1))          # escape_whitespaces
    out += _field_bytes(2, trainer) + _field_bytes(3, normalizer)
    return bytes(out)


def spm_case(lines, out_dir, texts):
    trainer_tok = Tokenizer(models.Unigram())
    trainer_tok.pre_tokenizer = metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=600, show_progress=False, unk_token="<unk>",
                                      special_tokens=["<unk>", "<s>", "</s>"])
    trainer_tok.train_from_iterator(lines[::3], trainer=trainer)  # Unigram training is slow
    trained = json.loads(trainer_tok.to_str())["model"]["vocab"]
    specials = {"<unk>", "<s>", "</s>"}
    pieces = [("<unk>", 0.0, UNKNOWN), ("<s>", 0.0, CONTROL), ("</s>", 0.0, CONTROL)]
    pieces += [("<0x%02X>" % b, 0.0, BYTE) for b in range(256)]
    pieces += [(p, s, NORMAL) for p, s in trained if p not in specials]

    path = os.path.join(out_dir, "spm_unigram", "tokenizer.model")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(sentencepiece_model_bytes(pieces, 1))

    # SentencePiece with this spec: prepend "▁", spaces -> "▁", Viterbi over the whole string.
    ref = Tokenizer(models.Unigram([(p, s) for p, s, _ in pieces], 0, True))
    ref.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    return {"name": "spm_unigram", "kind": "sentencepiece", "file": path,
            "ids": [ref.encode(t, add_special_tokens=False).ids for t in texts],
            "scores": [s for _, s, _ in pieces],
            "expected_roundtrip": texts}


def extra_texts(lines):
    """Corpus lines and random strings over a mixed character pool, appended to the given texts."""
    rng = random.Random(99)
    pool = (list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
            + list(" " * 12 + "\t\n\r.,;:!?'\"()[]{}-_+=*/\\@#$%^&|~`")
            + list("éüßçñøåæœ") + ["e\u0301", "a\u0308", "\u00a0", "\u3000", "\u2028"]
            + list("日本語中文学习模型мирשלוםمرحبا") + ["🙂", "🚀", "👍🏽", "🇫🇷", "x²", "½"]
            + ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'LL", "\r\n", "  ", "123456"])
    out = [l for l in rng.sample(lines, 300) if l]
    for _ in range(200):
        out.append("".join(rng.choice(pool) for _ in range(rng.randint(1, 40))))
    return out


def spm_bpe_case(lines, out_dir, texts):
    """A SentencePiece BPE model (as Llama-2 ships: byte fallback, identity normalizer) from a BPE
    trained by `tokenizers`; piece scores are minus the merge order. The reference is `tokenizers`'
    BPE with the merges derived from the pieces the way transformers' Llama converter does."""
    trainer_tok = Tokenizer(models.BPE())
    trainer_tok.pre_tokenizer = metaspace()
    trainer = trainers.BpeTrainer(vocab_size=800, min_frequency=2, show_progress=False,
                                  special_tokens=["<unk>", "<s>", "</s>"])
    trainer_tok.train_from_iterator(lines, trainer=trainer)
    trained = sorted(json.loads(trainer_tok.to_str())["model"]["vocab"].items(), key=lambda x: x[1])
    normal = [p for p, _ in trained if p not in ("<unk>", "<s>", "</s>")]
    pieces = [("<unk>", 0.0, UNKNOWN), ("<s>", 0.0, CONTROL), ("</s>", 0.0, CONTROL)]
    pieces += [("<0x%02X>" % b, 0.0, BYTE) for b in range(256)]
    pieces += [(p, -float(i), NORMAL) for i, p in enumerate(normal)]

    path = os.path.join(out_dir, "spm_bpe", "tokenizer.model")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(sentencepiece_model_bytes(pieces, 2))

    vocab = {p: i for i, (p, _, _) in enumerate(pieces)}
    score = {p: s for p, s, kind in pieces if kind == NORMAL}
    merges = []
    for piece in normal:  # every split of a piece into two pieces, best result first
        local = [(piece[:k], piece[k:]) for k in range(1, len(piece))
                 if piece[:k] in score and piece[k:] in score]
        merges += sorted(local, key=lambda m: (vocab[m[0]], vocab[m[1]]))
    merges.sort(key=lambda m: -score[m[0] + m[1]])
    ref = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True,
                               byte_fallback=True))
    ref.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    return {"name": "spm_bpe", "kind": "sentencepiece", "file": path,
            "ids": [ref.encode(t, add_special_tokens=False).ids for t in texts],
            "expected_roundtrip": texts}


def main():
    texts_path, out_dir = sys.argv[1], sys.argv[2]
    with open(texts_path, encoding="utf-8") as f:
        texts = json.load(f)
    lines = corpus()
    texts = texts + extra_texts(lines)
    cases = []

    gpt2 = train_bpe(lines, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
                     ["<|endoftext|>", "<|pad|>"])
    gpt2.add_special_tokens([AddedToken("<mask>", lstrip=True, special=True)])
    gpt2.post_processor = processors.ByteLevel(trim_offsets=False)
    cases.append(bpe_case("gpt2", gpt2, out_dir, texts))

    def prefix_space(data):
        data["pre_tokenizer"]["add_prefix_space"] = True
    cases.append(bpe_case("gpt2_prefix", modified(gpt2, prefix_space), out_dir, texts))

    def split_then_bytes(regex):
        return pre_tokenizers.Sequence([
            pre_tokenizers.Split(pattern=Regex(regex),
                                 behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])

    llama3 = train_bpe(lines, split_then_bytes(LLAMA3_REGEX),
                       ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"])
    bos = llama3.token_to_id("<|begin_of_text|>")
    llama3.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                      pair="<|begin_of_text|> $A <|begin_of_text|> $B",
                                      special_tokens=[("<|begin_of_text|>", bos)])])

    def pair_merges(data):
        data["model"]["merges"] = [m.split(" ") for m in data["model"]["merges"]]
    cases.append(bpe_case("llama3", llama3, out_dir, texts, rewrite=pair_merges))

    def ignore_merges(data):
        # Whole words added to the vocabulary without merges: only ignore_merges can produce them.
        data["model"]["ignore_merges"] = True
        vocab = data["model"]["vocab"]
        next_id = max(list(vocab.values()) + [t["id"] for t in data["added_tokens"]]) + 1
        for word in ["Ġworld", "Hello", "Ġspaces", "Ġbetween", "Ġsquare", "Ġinside", "Ġtensor"]:
            if word not in vocab:
                vocab[word] = next_id
                next_id += 1
    try:  # tokenizers >= 0.19 knows ignore_merges (Llama-3 sets it)
        llama3_im = modified(llama3, ignore_merges)
        if json.loads(llama3_im.to_str())["model"].get("ignore_merges"):
            cases.append(bpe_case("llama3_ignore_merges", llama3_im, out_dir, texts))
    except Exception:  # noqa: BLE001 -- older tokenizers: the case is skipped
        pass

    qwen2 = train_bpe(lines, split_then_bytes(QWEN2_REGEX),
                      ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    cases.append(bpe_case("qwen2", qwen2, out_dir, texts))

    def nfc(data):
        data["normalizer"] = {"type": "NFC"}
    cases.append(bpe_case("qwen2_nfc", modified(qwen2, nfc), out_dir, texts))

    cases.append(spm_case(lines, out_dir, texts))
    cases.append(spm_bpe_case(lines, out_dir, texts))

    with open(os.path.join(out_dir, "reference.json"), "w", encoding="utf-8") as f:
        json.dump({"texts": texts, "cases": cases}, f, ensure_ascii=False)


if __name__ == "__main__":
    main()
