"""The quickstart's demo model: a small CNN trained on Fashion-MNIST on the CPU for about a minute.

    /usr/bin/python3 bench/train_small_cnn.py OUT.pt [--seconds 60] [--seed 0]

Fixed seed, so a rerun gives the same model on the same machine. The model takes float images [N, 1, 28, 28] in
[0, 1] and normalises them itself; it is saved with torch.jit.script.
"""
import argparse
import os
import sys
import time

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
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(os.cpu_count() or 1)
    x, y = load_split("train")
    model = SmallCnn()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(args.seed)
    start, step, batch = time.time(), 0, 128
    model.train()
    while time.time() - start < args.seconds:
        order = torch.randperm(len(y), generator=generator)
        for i in range(0, len(y) - batch + 1, batch):
            idx = order[i:i + batch]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if time.time() - start >= args.seconds:
                break
    model.eval()
    torch.jit.script(model).save(args.out)
    with torch.no_grad():
        xt, yt = load_split("test")
        accuracy = (model(xt).argmax(1) == yt).float().mean().item()
    print(f"test accuracy {100 * accuracy:.2f}%")
    print(f"trained {step} steps ({step * batch / len(y):.2f} epochs) in {time.time() - start:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()
