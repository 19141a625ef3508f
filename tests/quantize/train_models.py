#!/usr/bin/env python3
"""The ctest fixture of the quantize tests: trains the demo dense and MoE models for a few dozen
steps with `origami train` (so that their weights have the structure of trained weights) and
exports them as Hugging Face folders under $ORIGAMI_QUANTIZE_MODELS/{dense,moe}, keeping the
training checkpoints beside them ({dense,moe}_ckpt). A model already built is kept."""
import fcntl
import os
import shutil

import quantize_lib as ql

MODELS = {
    # name: (config, steps)
    "dense": ("configs/demo/tiny_dense.pbtxt", 60),
    "moe": ("configs/demo/tiny_moe.pbtxt", 40),
}


def build(name, config, steps):
    root = ql.models_dir()
    folder, ckpt = os.path.join(root, name), os.path.join(root, name + "_ckpt")
    if os.path.exists(os.path.join(folder, "done")):
        print("%s: already built in %s" % (name, folder))
        return
    shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(ckpt, ignore_errors=True)
    sets = {"train.steps": steps, "train.micro_batch_size": 4, "train.grad_accum": 1,
            "train.seq_len": 64, "train.warmup_steps": 5, "train.log_every": 20,
            "train.checkpoint_dir": ckpt, "train.save_every": steps,
            "data.path": ql.CALIBRATION_DIR}
    args = ["train", os.path.join(ql.SOURCE, config), "--no-progress", "--no-resume",
            "--export-hf", folder]
    for k, v in sets.items():
        args += ["--set", "%s=%s" % (k, v)]
    ql.run(args)
    with open(os.path.join(folder, "done"), "w") as f:
        f.write("ok\n")


def main():
    os.makedirs(ql.models_dir(), exist_ok=True)
    with open(os.path.join(ql.models_dir(), "train.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for name, (config, steps) in MODELS.items():
            build(name, config, steps)


if __name__ == "__main__":
    main()
