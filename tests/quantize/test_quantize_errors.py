"""origami quantize refuses bad input before any work, with a non-zero exit and a message naming
the problem: a missing calibration file or none at all, bits out of range, a group size that does
not divide an input width, act-order without GPTQ, an unknown method, windows longer than the
model's context, an unsupported model (architecture, widths the packing cannot hold), and an
output folder that exists and is not empty (unless --overwrite, which replaces it).
"""
import json
import os
import unittest

import quantize_lib as ql


class BadInput(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.model = ql.model("dense")

    def fails(self, args, *parts):
        rc, out, err = ql.run(["quantize"] + args, expect_ok=False)
        self.assertNotEqual(rc, 0, "exit 0 for %s" % args)
        self.assertIn("origami quantize: error:", err)
        for p in parts:
            self.assertIn(p, err)

    def test_errors(self):
        with ql.TempDir() as tmp:
            out = os.path.join(tmp, "out")
            base = [self.model, out, "--tokenizer", "byte"]
            cal = ["--calibration", ql.CALIBRATION_FILE]
            g32 = ["--group-size", "32"]  # the default 128 does not divide mlp.down_proj's 352
            self.fails(base + g32 + ["--calibration", os.path.join(tmp, "missing.txt")],
                       "--calibration", "missing.txt", "does not exist")
            self.fails(base + g32, "needs calibration text", "--calibration")
            for bits in ("5", "1", "16"):
                self.fails(base + cal + g32 + ["--bits", bits], "--bits " + bits, "2, 3, 4 or 8")
            self.fails(base + cal + ["--group-size", "48"], "--group-size 48",
                       "does not divide the input width 128", "model.layers.0.self_attn.q_proj")
            self.fails(base + cal, "--group-size 128", "input width 352", "mlp.down_proj")
            self.fails(base + cal + ["--group-size", "0"], "--group-size 0")
            self.fails(base + g32 + ["--method", "rtn", "--act-order"], "--act-order",
                       "--method gptq")
            self.fails(base + cal + g32 + ["--method", "awq"], "--method", "awq")
            self.fails(base + cal + g32 + ["--seq-len", "4096"], "--seq-len 4096", "context of 128")
            self.fails(base + cal + g32 + ["--dtype", "i32"], "--dtype")
            self.fails(base + cal + g32 + ["--samples", "0"], "--samples")
            self.fails([self.model, "--tokenizer", "byte"] + cal + g32, "OUT_DIR")
            self.assertFalse(os.path.exists(out), "a failed run left OUT_DIR behind")

            # Unsupported models: an architecture origami does not know; widths the 3-bit packing
            # cannot hold (it needs multiples of 32).
            gpt2 = os.path.join(tmp, "gpt2")
            os.makedirs(gpt2)
            with open(os.path.join(gpt2, "config.json"), "w") as f:
                json.dump({"architectures": ["GPT2LMHeadModel"], "vocab_size": 100}, f)
            self.fails([gpt2, out, "--tokenizer", "byte", "--method", "rtn"], "GPT2LMHeadModel",
                       "not supported")
            narrow = os.path.join(tmp, "narrow")
            os.makedirs(narrow)
            cfg = ql.read_config(self.model)
            cfg.update(hidden_size=80, intermediate_size=160, num_attention_heads=5,
                       num_key_value_heads=1)
            with open(os.path.join(narrow, "config.json"), "w") as f:
                json.dump(cfg, f)
            self.fails([narrow, out, "--tokenizer", "byte", "--method", "rtn", "--bits", "3",
                        "--group-size", "-1"], "unsupported model", "self_attn.q_proj",
                       "multiples of 32")

            # An output folder in the way: refused, then replaced with --overwrite.
            os.makedirs(out)
            with open(os.path.join(out, "keep.txt"), "w") as f:
                f.write("mine\n")
            rtn = ["--method", "rtn", "--group-size", "32"]
            self.fails(base + rtn, out, "not empty", "--overwrite")
            self.assertTrue(os.path.exists(os.path.join(out, "keep.txt")))
            deq = os.path.join(tmp, "deq")
            os.makedirs(deq)
            with open(os.path.join(deq, "x"), "w") as f:
                f.write("x")
            self.fails([self.model, os.path.join(tmp, "out2"), "--tokenizer", "byte"] + rtn +
                       ["--dequantized", deq], "--dequantized", "not empty")
            ql.run(["quantize"] + base + rtn + ["--overwrite"])
            self.assertFalse(os.path.exists(os.path.join(out, "keep.txt")))
            self.assertIn("quantization_config", ql.read_config(out))
            self.assertEqual([n for n in os.listdir(tmp) if n.startswith(".")], [],
                             "temporary folders left behind")


if __name__ == "__main__":
    unittest.main(verbosity=2)
