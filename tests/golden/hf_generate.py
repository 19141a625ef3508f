"""Golden greedy generations from Hugging Face transformers, for the KV-cache generator.

Usage: hf_generate.py OUT_DIR FAMILY [FAMILY ...]

For every family it builds the same tiny random model as hf_models.py (same classes, configs and
initialisation), saves it with save_pretrained (float32 safetensors + config.json) into
OUT_DIR/FAMILY/model, then runs transformers' generate(do_sample=False) in float64 (eager
attention, its own KV cache) on a few prompts of different lengths, one prompt at a time,
writing into OUT_DIR/FAMILY:
  prompt_I.npy        [n_I] int64 prompt I
  tokens_I.npy        [m_I] int64 the generated tokens (an end-of-sequence token ends them)
  margins_I.npy       [m_I] float64 top-1 minus top-2 logit at each step (how close a tie was)
  eos.npy             [1] the config's eos_token_id
  max_new_tokens.npy  [1]
  window_keys.npy     [1] keys a query sees under the sliding window (0 = none), as hf_models.py
and status.txt: "ok", or "unavailable: why" when this transformers lacks the class.
"""

import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hf_models  # noqa: E402  (same folder)

PROMPT_LENGTHS = (5, 11, 1)
MAX_NEW_TOKENS = 12


def run(out_dir, family):
    root = os.path.join(out_dir, family)
    os.makedirs(root, exist_ok=True)
    try:
        cls, cfg = hf_models.build(family)
    except ImportError as e:
        with open(os.path.join(root, "status.txt"), "w") as f:
            f.write("unavailable: %s\n" % e)
        return
    cfg._attn_implementation = "eager"
    cfg.output_router_logits = False
    torch.manual_seed(1234)
    model = cls(cfg).float()
    hf_models.perturb(model)  # as hf_models.py
    model.save_pretrained(os.path.join(root, "model"), safe_serialization=True)
    model = model.double()
    model.eval()
    torch.set_default_dtype(torch.float64)  # transformers' mask construction needs it

    eos = cfg.eos_token_id
    np.save(os.path.join(root, "eos.npy"), np.array([-1 if eos is None else int(eos)]))
    np.save(os.path.join(root, "max_new_tokens.npy"), np.array([MAX_NEW_TOKENS]))
    np.save(os.path.join(root, "window_keys.npy"), np.array([hf_models.window_keys(cfg)]))
    g = torch.Generator().manual_seed(7)
    for i, n in enumerate(PROMPT_LENGTHS):
        prompt = torch.randint(0, cfg.vocab_size, (1, n), generator=g)
        with torch.no_grad():
            out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt),
                                 do_sample=False, max_new_tokens=MAX_NEW_TOKENS,
                                 pad_token_id=eos, output_scores=True,
                                 return_dict_in_generate=True)
        tokens = out.sequences[0, n:]
        margins = []
        for s in out.scores:
            top = torch.topk(s[0].double(), 2).values
            margins.append(float(top[0] - top[1]))
        np.save(os.path.join(root, "prompt_%d.npy" % i), prompt[0].numpy())
        np.save(os.path.join(root, "tokens_%d.npy" % i), tokens.numpy())
        np.save(os.path.join(root, "margins_%d.npy" % i), np.array(margins))
    with open(os.path.join(root, "status.txt"), "w") as f:
        f.write("ok\n")
    torch.set_default_dtype(torch.float32)


def main():
    if len(sys.argv) < 3:
        print(__doc__)
        return 2
    torch.set_num_threads(2)
    for family in sys.argv[2:]:
        run(sys.argv[1], family)
    return 0


if __name__ == "__main__":
    sys.exit(main())
