"""The quickstart's demo model: a small CNN trained on Fashion-MNIST on the CPU, two epochs (under a minute on 2 cores).

    /usr/bin/python3 bench/train_small_cnn.py OUT.pt [--epochs 2] [--seconds S] [--seed 0]

A fixed amount of work, not of time, with a fixed seed, so the model does not depend on how fast the machine is
(a run stopped by time got 83% on one machine and 90% on another); --seconds stops earlier on a slow one. The
model takes float images [N, 1, 28, 28] in [0, 1] and normalises them itself; it is saved with torch.jit.script.
Its test accuracy is the float32 row of the quickstart's table (`bayesq eval`): scoring all 10,000 test images
here in one batch took longer than most of the training.
"""
import argparse
import os
import sys
import time

# Every step allocates and frees the same large activations; above glibc's mmap threshold each is returned to the
# kernel and faulted in again, zeroed, on the next step (2.5x the step time on the 2-core machine). Keep them in
# the heap, as bayesq's main() does with mallopt: glibc reads these settings at start, so re-run with them set.
_TUNABLES = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=268435456"
if __name__ == "__main__" and "GLIBC_TUNABLES" not in os.environ:
    os.execve(sys.executable, [sys.executable] + sys.argv, dict(os.environ, GLIBC_TUNABLES=_TUNABLES))

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fashion_mnist import MEAN, STD, load_split  # noqa: E402


class SmallCnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.mean, self.std = MEAN, STD
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(64)
        self.conv3 = nn.Conv2d(64, 128, 3, padding=1)
        self.bn3 = nn.BatchNorm2d(128)
        self.fc1 = nn.Linear(128 * 3 * 3, 256)
        self.fc2 = nn.Linear(256, 10)

    def forward(self, x):
        x = (x - self.mean) / self.std
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        x = F.max_pool2d(F.relu(self.bn3(self.conv3(x))), 2)
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=0.0, help="stop after this long (0: no limit)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.epochs < 1:
        parser.error("--epochs must be at least 1")
    torch.manual_seed(args.seed)
    torch.set_num_threads(os.cpu_count() or 1)
    x, y = load_split("train")
    # Channels-last activations: the CPU's convolution kernels run 20-30% faster on them here. The saved weights go
    # back to the usual layout below.
    x = x.contiguous(memory_format=torch.channels_last)
    model = SmallCnn().to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(args.seed)
    start, step, batch = time.time(), 0, 128
    model.train()
    out_of_time = False
    for _ in range(args.epochs):
        order = torch.randperm(len(y), generator=generator)
        for i in range(0, len(y) - batch + 1, batch):
            idx = order[i:i + batch]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if args.seconds > 0 and time.time() - start >= args.seconds:
                out_of_time = True
                break
        if out_of_time:
            break
    model.eval()
    model = model.to(memory_format=torch.contiguous_format)
    torch.jit.script(model).save(args.out)
    print(f"trained {step} steps ({step * batch / len(y):.2f} epochs) in {time.time() - start:.0f} s, "
          f"last batch loss {loss.item():.3f} -> {args.out}")


if __name__ == "__main__":
    main()
