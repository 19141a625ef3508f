"""origami quantize on the trained MoE model (Mixtral-style, 4 experts, top-2): every expert gets
its own Hessian from the tokens routed to it.

- With the usual calibration every expert's dequantized weights differ from round-to-nearest's,
  its gate/up projections (w1, w3) have a smaller ||W X - W^ X||^2 than RTN on the tokens that
  transformers routes to that expert, and the GPTQ folder decodes to the --dequantized weights.
  The router stays unquantized.
- With a single calibration token only the top-2 experts of each layer see it: the progress names
  the other two of every layer as RTN fallbacks (computed here with transformers: layer 0 of the
  original model; layer 1 after layer 0 of the quantized one, as GPTQ runs), their weights are
  exactly RTN's, and the others' are not.
- Qwen2-MoE: the shared expert's MLP is quantized (with its own Hessian), its gate, the router and
  the q/k/v biases are not.
"""
import os
import unittest

import numpy as np
import torch

import quantize_lib as ql
from gptq_unpack import dequantize, load_gptq_folder, load_safetensors

WEIGHTS = ("w1", "w2", "w3")
FLAGS = ["--bits", "4", "--group-size", "32"]


def expert_weight(layer, expert, w):
    return "model.layers.%d.block_sparse_moe.experts.%d.%s.weight" % (layer, expert, w)


class MoeQuantize(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.model = ql.model("moe")
        cls.cfg = ql.read_config(cls.model)
        cls.layers, cls.experts = cls.cfg["num_hidden_layers"], cls.cfg["num_local_experts"]
        cls.original = load_safetensors(cls.model)
        cls.tmp = ql.TempDir()
        tmp = cls.tmp.__enter__()
        cls.rtn_deq = os.path.join(tmp, "rtn_deq")
        ql.quantize(cls.model, os.path.join(tmp, "rtn"), "--method", "rtn", *FLAGS,
                    dequantized=cls.rtn_deq, calibration=None)
        cls.rtn = load_safetensors(cls.rtn_deq)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.__exit__(None, None, None)

    def test_per_expert_hessians(self):
        with ql.TempDir() as tmp:
            out, deq = os.path.join(tmp, "gptq"), os.path.join(tmp, "deq")
            samples, seq_len, seed = 16, 64, 3
            stdout = ql.quantize(self.model, out, *FLAGS, "--samples", samples, "--seq-len",
                                 seq_len, "--seed", seed, dequantized=deq)
            gptq = load_safetensors(deq)
            fallbacks = ql.fallback_experts(stdout)
            self.assertEqual(fallbacks, [], "every expert should get calibration tokens")
            # Every expert's weights are its own GPTQ result, not RTN's.
            for l in range(self.layers):
                for e in range(self.experts):
                    for w in WEIGHTS:
                        n = expert_weight(l, e, w)
                        self.assertFalse(np.array_equal(gptq[n], self.rtn[n]), n + " equals RTN")
            # The router is not quantized.
            for l in range(self.layers):
                n = "model.layers.%d.block_sparse_moe.gate.weight" % l
                np.testing.assert_array_equal(gptq[n], self.original[n], n)
            # The GPTQ folder decodes to the dequantized weights, experts included.
            qc, linears, others = load_gptq_folder(out)
            self.assertEqual(len(linears), self.layers * (4 + 3 * self.experts))
            for name, parts in linears.items():
                np.testing.assert_array_equal(dequantize(*parts), gptq[name + ".weight"], name)
            self.assertIn("model.layers.0.block_sparse_moe.gate.weight", others)
            # On the tokens routed to each expert (original model), w1 and w3 beat RTN.
            windows = ql.windows(ql.byte_tokens(ql.CALIBRATION_FILE), samples, seq_len, seed)
            grams = self.expert_grams(windows)
            worse = []
            for (l, e), gram in sorted(grams.items()):
                for w in ("w1", "w3"):
                    n = expert_weight(l, e, w)
                    d_g = self.original[n].astype(np.float64) - gptq[n]
                    d_r = self.original[n].astype(np.float64) - self.rtn[n]
                    eg = np.einsum("oi,ij,oj->", d_g, gram, d_g)
                    er = np.einsum("oi,ij,oj->", d_r, gram, d_r)
                    print("  %-55s GPTQ / RTN %.3f" % (n, eg / er))
                    if not eg < er:
                        worse.append(n)
            self.assertEqual(len(grams), self.layers * self.experts)
            self.assertEqual(worse, [])

    def expert_grams(self, windows):
        """{(layer, expert): X^T X} over the rows transformers routes to each expert."""
        model = ql.load_hf(self.model)
        grams, hooks = {}, []
        for l, layer in enumerate(model.model.layers):
            for e, expert in enumerate(layer.block_sparse_moe.experts):
                def hook(mod, inputs, output, key=(l, e)):
                    x = inputs[0].reshape(-1, inputs[0].shape[-1])
                    grams[key] = grams.get(key, 0) + (x.T @ x).numpy()
                hooks.append(expert.w1.register_forward_hook(hook))
        with torch.no_grad():
            for w in windows:
                model(input_ids=torch.tensor([w]))
        for h in hooks:
            h.remove()
        return grams

    def test_single_token_falls_back_to_rtn(self):
        with ql.TempDir() as tmp:
            text = os.path.join(tmp, "one_token.txt")
            with open(text, "w") as f:
                f.write("a")  # the stream is [97, EOS]; the window picks one of them
            out, deq = os.path.join(tmp, "gptq"), os.path.join(tmp, "deq")
            stdout = ql.quantize(self.model, out, *FLAGS, "--samples", 1, "--seq-len", 1,
                                 "--seed", 7, dequantized=deq, calibration=text)
            token = ql.windows(ql.byte_tokens(text), 1, 1, 7)[0][0]
            gptq = load_safetensors(deq)
            routed = self.top_k_experts(token, gptq)
            expected = sorted((l, "block_sparse_moe.experts.%d.%s" % (e, w))
                              for l in range(self.layers) for e in range(self.experts)
                              if e not in routed[l] for w in WEIGHTS)
            got = ql.fallback_experts(stdout)
            print("token %d routed to %s; RTN fallbacks: %s" % (token, routed, got))
            # Per layer, the progress names the experts the token did not reach.
            self.assertEqual(sorted(got), expected)
            for l in range(self.layers):
                for e in range(self.experts):
                    for w in WEIGHTS:
                        n = expert_weight(l, e, w)
                        same = np.array_equal(gptq[n], self.rtn[n])
                        self.assertEqual(same, e not in routed[l], n)

    def top_k_experts(self, token, gptq):
        """The experts each layer routes `token` to, as GPTQ's calibration saw them: layer l runs
        after layers < l were quantized (their GPTQ weights), itself unquantized."""
        model = ql.load_hf(self.model)
        k = self.cfg["num_experts_per_tok"]
        routed = []
        for l in range(self.layers):
            if l > 0:  # layer l-1 as quantized
                prefix = "model.layers.%d." % (l - 1)
                state = model.state_dict()
                with torch.no_grad():
                    for name in state:
                        if name.startswith(prefix) and name in gptq:
                            state[name].copy_(torch.from_numpy(gptq[name]))
            logits = {}
            gate = model.model.layers[l].block_sparse_moe.gate
            h = gate.register_forward_hook(lambda m, i, o: logits.setdefault("x", o.detach()))
            with torch.no_grad():
                model(input_ids=torch.tensor([[token]]))
            h.remove()
            row = logits["x"].reshape(-1)
            order = torch.argsort(row, descending=True).tolist()
            margin = float(row[order[k - 1]] - row[order[k]])
            self.assertGreater(margin, 1e-4, "layer %d: a near-tie in the routing" % l)
            routed.append(set(order[:k]))
        return routed

    def test_qwen2_moe_shared_expert(self):
        # A Qwen2-MoE (random weights, transformers' own init): the shared expert's MLP is
        # quantized with its own Hessian, its sigmoid gate and the router are not, the q/k/v biases
        # stay as they are, and the dense layer (decoder_sparse_step 2) is quantized as in Llama.
        from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM
        cfg = Qwen2MoeConfig(vocab_size=264, hidden_size=128, num_attention_heads=4,
                             num_key_value_heads=2, num_hidden_layers=2, intermediate_size=128,
                             moe_intermediate_size=64, shared_expert_intermediate_size=96,
                             num_experts=4, num_experts_per_tok=2, decoder_sparse_step=2,
                             max_position_embeddings=256, tie_word_embeddings=False)
        with ql.TempDir() as tmp:
            torch.manual_seed(5)
            src = os.path.join(tmp, "qwen")
            Qwen2MoeForCausalLM(cfg).float().save_pretrained(src, safe_serialization=True)
            original = load_safetensors(src)
            folders = {}
            for method in ("gptq", "rtn"):
                folders[method] = os.path.join(tmp, method + "_deq")
                ql.quantize(src, os.path.join(tmp, method), "--method", method, *FLAGS,
                            "--samples", 8, "--seq-len", 64, dequantized=folders[method],
                            calibration=ql.CALIBRATION_FILE if method == "gptq" else None)
            gptq, rtn = (load_safetensors(folders[m]) for m in ("gptq", "rtn"))
            qc, linears, others = load_gptq_folder(os.path.join(tmp, "gptq"))
            moe, dense = "model.layers.1.mlp.", "model.layers.0.mlp."  # decoder_sparse_step 2
            for n in ("shared_expert.gate_proj", "shared_expert.up_proj", "shared_expert.down_proj",
                      "experts.3.down_proj"):
                self.assertIn(moe + n, linears)
                self.assertFalse(np.array_equal(gptq[moe + n + ".weight"], rtn[moe + n + ".weight"]),
                                 n + " equals RTN")
            for n in ("gate_proj", "up_proj", "down_proj"):
                self.assertIn(dense + n, linears)
            self.assertEqual(len(linears), 2 * 4 + 3 * 4 + 3 + 3)
            for n in (moe + "gate.weight", moe + "shared_expert_gate.weight",
                      "model.layers.0.self_attn.q_proj.bias"):
                self.assertIn(n, others)
                np.testing.assert_array_equal(gptq[n], original[n], n)
            for name, parts in linears.items():
                np.testing.assert_array_equal(dequantize(*parts), gptq[name + ".weight"], name)


if __name__ == "__main__":
    unittest.main(verbosity=2)
