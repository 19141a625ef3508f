"""origami quantize writes Hugging Face GPTQ folders that decode to exactly the model it reports:
runs on the trained dense model (2, 3, 4 and 8 bits; groups of 16 and 32 columns and one group;
act-order; symmetric and asymmetric; from the Hugging Face folder and from the training
checkpoint; a calibration file and a folder), each unpacked by tests/golden/gptq_unpack.py (written
from the format's description) and compared with the --dequantized fp32 folder: equal bit for bit
(the dequantized weights use the fp16 scales the checkpoint stores). Also checked: config.json's
quantization_config, the tensor inventory and dtypes, g_idx, the symmetric zero points, and the
unquantized tensors (exact in the dequantized folder, rounded to --dtype in the GPTQ folder).
"""
import os
import unittest

import numpy as np

import quantize_lib as ql
from gptq_unpack import dequantize, load_gptq_folder, load_safetensors

LINEARS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]

# name: (source, bits, group, act_order, sym, extra flags)
RUNS = {
    "b4_g32_act": ("hf", 4, 32, True, False, []),
    "b8_one_group_sym": ("ckpt", 8, -1, False, True, []),
    "b3_g32": ("hf", 3, 32, False, False, []),
    "b3_g32_sym_act": ("hf", 3, 32, True, True, ["--calibration", ql.CALIBRATION_DIR]),
    "b2_g16_f32": ("hf", 2, 16, False, False, ["--dtype", "f32"]),
    "b4_rtn": ("hf", 4, 32, False, False, ["--method", "rtn"]),
}


class GptqFolder(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.model = ql.model("dense")
        cls.original = load_safetensors(cls.model)
        cls.config = ql.read_config(cls.model)

    def test_runs(self):
        for name, run in RUNS.items():
            with self.subTest(run=name), ql.TempDir() as tmp:
                self.check_run(name, *run, tmp)

    def check_run(self, name, source, bits, group, act, sym, extra, tmp):
        out, deq = os.path.join(tmp, "gptq"), os.path.join(tmp, "deq")
        flags = ["--bits", bits, "--group-size", group, "--samples", 16, "--seq-len", 64,
                 "--dequantized", deq] + (["--act-order"] if act else []) + \
                (["--sym"] if sym else []) + extra
        if "--calibration" not in extra and "rtn" not in extra:
            flags += ["--calibration", ql.CALIBRATION_FILE]
        if source == "hf":
            ql.run(["quantize", self.model, out, "--tokenizer", "byte"] + flags)
        else:  # the training checkpoint and its config (tokenizer: the config's, byte)
            ql.run(["quantize", "--config", os.path.join(ql.SOURCE, "configs/demo/tiny_dense.pbtxt"),
                    "--checkpoint", self.model + "_ckpt", out] + flags)
        dtype = np.float32 if "f32" in extra else np.float16

        # config.json: the model's, plus quantization_config.
        cfg = ql.read_config(out)
        qc = cfg["quantization_config"]
        self.assertEqual(qc["quant_method"], "gptq")
        self.assertEqual((qc["bits"], qc["group_size"], qc["desc_act"], qc["sym"]),
                         (bits, group, act, sym))
        self.assertEqual(qc["checkpoint_format"], "gptq")
        self.assertAlmostEqual(qc["damp_percent"], 0.01)
        for key in ("architectures", "hidden_size", "num_hidden_layers", "vocab_size"):
            self.assertEqual(cfg[key], self.config[key], key)
        self.assertEqual(cfg["torch_dtype"], "float32" if dtype == np.float32 else "float16")
        self.assertTrue(os.path.exists(os.path.join(out, "origami_tokenizer.txt")))
        with open(os.path.join(out, "origami_tokenizer.txt")) as f:
            self.assertEqual(f.readline(), "byte\n")
        if name == "b4_g32_act":  # origami finds the byte tokenizer by itself
            ql.run(["generate", "--model", deq, "--prompt", "The", "--max-new-tokens", 4,
                    "--temperature", 0, "--no-stats"])
        deq_cfg = ql.read_config(deq)
        self.assertNotIn("quantization_config", deq_cfg)
        self.assertEqual(deq_cfg["torch_dtype"], "float32")

        # Tensors: every linear packed, nothing else quantized.
        qc_, linears, others = load_gptq_folder(out)
        dequantized = load_safetensors(deq)
        layers = self.config["num_hidden_layers"]
        expect = {"model.layers.%d.%s" % (l, n) for l in range(layers) for n in LINEARS}
        self.assertEqual(set(linears), expect)
        self.assertEqual(set(others) | {n + ".weight" for n in expect}, set(self.original))
        mismatched, worst = 0, 0.0
        for n, (q, zeros, scales, g_idx) in linears.items():
            w = self.original[n + ".weight"]
            out_f, in_f = w.shape
            g = in_f if group == -1 else group
            self.assertEqual(scales.shape, (in_f // g, out_f), n)
            self.assertTrue((q >= 0).all() and (q < 2**bits).all(), n)
            if sym:
                self.assertTrue((zeros == 2 ** (bits - 1)).all(), n + ": symmetric zero points")
            counts = np.bincount(g_idx, minlength=in_f // g)
            self.assertTrue((counts == g).all(), n + ": every group holds group_size columns")
            if not act:
                np.testing.assert_array_equal(g_idx, np.arange(in_f) // g, n)
            w_hat = dequantize(q, zeros, scales, g_idx)
            ref = dequantized[n + ".weight"]
            mismatched += int((w_hat != ref).sum())
            worst = max(worst, float(np.abs(w_hat - ref).max()))
            rel = np.linalg.norm(w_hat - w) / np.linalg.norm(w)
            self.assertTrue(0 < rel < 0.8, "%s: relative weight error %.3g" % (n, rel))
        print("%s: %d linears unpacked, %d values differ from --dequantized (max %.3g)" %
              (name, len(linears), mismatched, worst))
        self.assertEqual(mismatched, 0, name + ": the GPTQ folder decodes to other weights")

        # Unquantized tensors: exact in the dequantized folder, as --dtype in the GPTQ folder.
        for n, t in others.items():
            self.assertEqual(t.dtype, dtype, n)
            np.testing.assert_array_equal(t, self.original[n].astype(dtype), n)
            np.testing.assert_array_equal(dequantized[n], self.original[n], n)

    def test_tokenizer_files_are_copied(self):
        # A model folder with its own tokenizer files: OUT_DIR and the dequantized folder get
        # copies (RTN: the tokenizer is not loaded, so placeholder files do).
        files = {"tokenizer.json": '{"version": "1.0"}', "tokenizer_config.json": "{}",
                 "special_tokens_map.json": "{}", "generation_config.json": '{"eos_token_id": 2}'}
        with ql.TempDir() as tmp:
            src = os.path.join(tmp, "model")
            os.makedirs(src)
            for n in ("config.json", "model.safetensors"):
                os.symlink(os.path.join(self.model, n), os.path.join(src, n))
            for n, text in files.items():
                with open(os.path.join(src, n), "w") as f:
                    f.write(text)
            out, deq = os.path.join(tmp, "gptq"), os.path.join(tmp, "deq")
            ql.run(["quantize", src, out, "--method", "rtn", "--group-size", "32",
                    "--dequantized", deq])
            for folder in (out, deq):
                for n, text in files.items():
                    with open(os.path.join(folder, n)) as f:
                        self.assertEqual(f.read(), text, os.path.join(folder, n))
                self.assertFalse(os.path.exists(os.path.join(folder, "origami_tokenizer.txt")))


if __name__ == "__main__":
    unittest.main(verbosity=2)
