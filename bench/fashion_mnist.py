"""Fashion-MNIST from Debian's dataset-fashion-mnist package (IDX files), in bayesq's data format.

    python3 bench/fashion_mnist.py OUT_DIR [--calib-size 512] [--seed 0]

writes OUT_DIR/fmnist_calib.pt (the calibration set: `--calib-size` training images chosen with `--seed`) and
OUT_DIR/fmnist_eval.pt (the official 10k test split), each {"inputs": float32 [N, 1, 28, 28] in [0, 1],
"labels": int64 [N]}. Models normalise their own inputs. Also importable: load_split("train" | "test").
"""
import argparse
import gzip
import os

import numpy as np
import torch

DATA_DIR = os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")
MEAN, STD = 0.2860, 0.3530  # of the training images; the models' input normalisation


def _read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def load_split(split):
    prefix = "train" if split == "train" else "t10k"
    images = _read_idx(os.path.join(DATA_DIR, f"{prefix}-images-idx3-ubyte.gz"))
    labels = _read_idx(os.path.join(DATA_DIR, f"{prefix}-labels-idx1-ubyte.gz"))
    x = torch.from_numpy(images.copy()).float().div_(255.0).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y


def calibration_indices(count, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(60000, generator=generator)[:count]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--calib-size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    x, y = load_split("train")
    idx = calibration_indices(args.calib_size, args.seed)
    torch.save({"inputs": x[idx].clone(), "labels": y[idx].clone()}, os.path.join(args.out, "fmnist_calib.pt"))
    x, y = load_split("test")
    torch.save({"inputs": x, "labels": y}, os.path.join(args.out, "fmnist_eval.pt"))
    print(f"wrote {args.out}/fmnist_calib.pt ({args.calib_size} examples) and fmnist_eval.pt ({len(y)} examples)")


if __name__ == "__main__":
    main()
