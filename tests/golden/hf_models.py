"""Golden data for the model families, from Hugging Face transformers (the reference classes,
eager attention), computed in float64.

Usage: hf_models.py OUT_DIR FAMILY [FAMILY ...]

For every family it builds a tiny random model, saves it with save_pretrained (float32
safetensors + config.json) into OUT_DIR/FAMILY/model, converts the model to float64 and runs
STEPS AdamW steps on one fixed batch, writing into OUT_DIR/FAMILY:
  ids.npy, targets.npy      [B,S] int64; targets[b,s] is the token predicted at position s
                            (-100 = ignored; Hugging Face's shifted labels)
  logits.npy                [B,S,V] before the first step
  loss.npy                  [STEPS+1] loss before each step and after the last one
  aux.npy                   [1] the load-balancing loss of the first forward (MoE families)
  window_keys.npy           [1] keys a query sees under the model's sliding window (0 = no window),
                            measured on this transformers' own mask (4.38 keeps one key fewer
                            than later versions for the same config value)
  grads/NAME.npy            gradient of the first step, per Hugging Face parameter name
  params/NAME.npy           parameters after STEPS steps
and OUT_DIR/FAMILY/status.txt: "ok", or "unavailable: why" when this transformers lacks the class.
"""

import os
import sys

import numpy as np
import torch

B, S, V = 2, 17, 300
STEPS = 5
ADAMW = dict(lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)

COMMON = dict(vocab_size=V, hidden_size=96, num_attention_heads=6, num_key_value_heads=2,
              rms_norm_eps=1e-6, initializer_range=0.05, max_position_embeddings=64)


def build(family):
    import transformers
    if family == "llama":
        cfg = transformers.LlamaConfig(**COMMON, num_hidden_layers=2, intermediate_size=160,
                                       rope_theta=10000.0, tie_word_embeddings=False)
        return transformers.LlamaForCausalLM, cfg
    if family == "llama_tied":
        cfg = transformers.LlamaConfig(**COMMON, num_hidden_layers=3, intermediate_size=136,
                                       rope_theta=500000.0, tie_word_embeddings=True)
        return transformers.LlamaForCausalLM, cfg
    if family == "mixtral":
        cfg = transformers.MixtralConfig(**COMMON, num_hidden_layers=2, intermediate_size=160,
                                         num_local_experts=6, num_experts_per_tok=2,
                                         output_router_logits=True, router_aux_loss_coef=0.02,
                                         sliding_window=8, rope_theta=1e6,
                                         tie_word_embeddings=False)
        return transformers.MixtralForCausalLM, cfg
    if family == "qwen2_moe":
        if not hasattr(transformers, "Qwen2MoeForCausalLM"):
            raise ImportError("transformers %s has no Qwen2MoeForCausalLM (needs >= 4.40)"
                              % transformers.__version__)
        cfg = transformers.Qwen2MoeConfig(**COMMON, num_hidden_layers=4, intermediate_size=176,
                                          moe_intermediate_size=80,
                                          shared_expert_intermediate_size=112, num_experts=6,
                                          num_experts_per_tok=2, norm_topk_prob=False,
                                          decoder_sparse_step=2, output_router_logits=True,
                                          router_aux_loss_coef=0.02, rope_theta=10000.0,
                                          tie_word_embeddings=False, use_sliding_window=False)
        return transformers.Qwen2MoeForCausalLM, cfg
    raise ValueError("unknown family " + family)


def perturb(model):
    """Moves norms and biases away from their init values (ones and zeros), so that they matter."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.05 * torch.randn_like(p))


def window_keys(cfg):
    """How many keys the last query of a long sequence sees with this config's sliding window."""
    w = getattr(cfg, "sliding_window", None)
    if w is None or (hasattr(cfg, "use_sliding_window") and not cfg.use_sliding_window):
        return 0
    from transformers.modeling_attn_mask_utils import _prepare_4d_causal_attention_mask
    n = 4 * w
    embeds = torch.zeros(1, n, 1, dtype=torch.float32)
    mask = _prepare_4d_causal_attention_mask(None, (1, n), embeds, 0, sliding_window=w)
    return int((mask[0, 0, -1] == 0).sum())


def run(out_dir, family):
    root = os.path.join(out_dir, family)
    os.makedirs(root, exist_ok=True)
    try:
        cls, cfg = build(family)
    except ImportError as e:
        with open(os.path.join(root, "status.txt"), "w") as f:
            f.write("unavailable: %s\n" % e)
        return
    cfg._attn_implementation = "eager"
    torch.manual_seed(1234)
    model = cls(cfg).float()
    perturb(model)
    model.save_pretrained(os.path.join(root, "model"), safe_serialization=True)
    model = model.double()
    model.train()
    # transformers builds its causal mask with torch.full(..., finfo(float64).min) and no dtype,
    # which needs float64 as the default dtype.
    torch.set_default_dtype(torch.float64)

    g = torch.Generator().manual_seed(99)
    ids = torch.randint(0, V, (B, S), generator=g)
    targets = torch.randint(0, V, (B, S), generator=g)
    targets[torch.rand(B, S, generator=g) < 0.2] = -100
    targets[:, -1] = -100  # the last position has no next token
    # transformers shifts: logits[:, s] is scored against labels[:, s + 1] = targets[:, s].
    labels = torch.cat([torch.full((B, 1), -100), targets[:, :-1]], dim=1)
    np.save(os.path.join(root, "ids.npy"), ids.numpy())
    np.save(os.path.join(root, "window_keys.npy"), np.array([window_keys(cfg)]))
    np.save(os.path.join(root, "targets.npy"), targets.numpy())

    opt = torch.optim.AdamW(model.parameters(), **ADAMW)
    losses = []
    for step in range(STEPS):
        opt.zero_grad()
        out = model(input_ids=ids, labels=labels)
        losses.append(out.loss.item())
        out.loss.backward()
        if step == 0:
            np.save(os.path.join(root, "logits.npy"), out.logits.detach().numpy())
            aux = getattr(out, "aux_loss", None)
            np.save(os.path.join(root, "aux.npy"),
                    np.array([0.0 if aux is None else float(aux)]))
            os.makedirs(os.path.join(root, "grads"), exist_ok=True)
            for name, p in model.named_parameters():
                np.save(os.path.join(root, "grads", name + ".npy"), p.grad.detach().numpy())
        opt.step()
    with torch.no_grad():
        losses.append(model(input_ids=ids, labels=labels).loss.item())
    np.save(os.path.join(root, "loss.npy"), np.array(losses))
    os.makedirs(os.path.join(root, "params"), exist_ok=True)
    for name, p in model.named_parameters():
        np.save(os.path.join(root, "params", name + ".npy"), p.detach().numpy())
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
