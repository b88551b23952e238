"""Trains a benchmark vision model on Fashion-MNIST (GPU), by a fixed, seeded recipe, and saves it scripted.

    python3 bench/train_vision.py ARCH OUT.pt [--epochs 12] [--seed 0]     (ARCH: resnet50 | mobilenet_v2)

Recipe: SGD with Nesterov momentum 0.9, weight decay 5e-4, batch 256, one-cycle learning rate peaking at 0.2
(0.1 for MobileNetV2), random 2-pixel translations and horizontal flips, bf16 autocast, channels-last. Prints
the test accuracy and writes it beside the model (OUT.json).
"""
import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fashion_mnist import load_split  # noqa: E402
from models import make  # noqa: E402


def augment(x, generator):
    # Random translation by up to 2 pixels (pad and crop) and random horizontal flip, per batch on the GPU.
    n = x.size(0)
    padded = F.pad(x, (2, 2, 2, 2))
    dx, dy = torch.randint(0, 5, (2,), generator=generator).tolist()
    x = padded[:, :, dy:dy + 28, dx:dx + 28]
    flip = torch.rand(n, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("arch")
    parser.add_argument("out")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    device = torch.device("cuda")
    x, y = load_split("train")
    xt, yt = load_split("test")
    x, y, xt, yt = x.to(device), y.to(device), xt.to(device), yt.to(device)
    model = make(args.arch).to(device).to(memory_format=torch.channels_last)
    batch = 256
    steps = args.epochs * (len(y) // batch)
    peak = 0.1 if args.arch == "mobilenet_v2" else 0.2
    optimizer = torch.optim.SGD(model.parameters(), lr=peak, momentum=0.9, nesterov=True, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peak, total_steps=steps, pct_start=0.25)
    generator = torch.Generator().manual_seed(args.seed)
    start = time.time()
    model.train()
    for epoch in range(args.epochs):
        order = torch.randperm(len(y), generator=generator).to(device)
        for i in range(len(y) // batch):
            idx = order[i * batch:(i + 1) * batch]
            inputs = augment(x[idx], generator).contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = F.cross_entropy(model(inputs), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    train_seconds = time.time() - start
    model.eval().float()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(yt), 1000):
            correct += (model(xt[i:i + 1000]).argmax(1) == yt[i:i + 1000]).sum().item()
    accuracy = correct / len(yt)
    model = model.to(memory_format=torch.contiguous_format).cpu()
    torch.jit.script(model).save(args.out)
    info = {"arch": args.arch, "epochs": args.epochs, "seed": args.seed, "test_top1": accuracy,
            "train_seconds": train_seconds, "torch": torch.__version__}
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump(info, f)
    print(json.dumps(info))


if __name__ == "__main__":
    main()
