"""Benchmark models for 1-channel 28x28 Fashion-MNIST: torchvision ResNet-50 / ResNet-18 / MobileNetV2 with a
1-channel stride-1 stem (and no max-pool for the ResNets), taking images in [0, 1] and normalising them inside."""
import torch
import torch.nn as nn
import torchvision

MEAN, STD = 0.2860, 0.3530


class Normalized(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.mean, self.std = MEAN, STD
        self.net = net

    def forward(self, x):
        return self.net((x - self.mean) / self.std)


def make(arch, num_classes=10):
    if arch in ("resnet50", "resnet18"):
        net = getattr(torchvision.models, arch)(num_classes=num_classes)
        net.conv1 = nn.Conv2d(1, 64, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif arch == "mobilenet_v2":
        net = torchvision.models.mobilenet_v2(num_classes=num_classes)
        net.features[0][0] = nn.Conv2d(1, 32, 3, stride=1, padding=1, bias=False)
    else:
        raise ValueError(arch)
    return Normalized(net)


if __name__ == "__main__":
    # Random-initialised, scripted copies for the CPU benchmarks: python3 bench/models.py OUT_DIR
    import os
    import sys
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    for arch in ("resnet50", "resnet18", "mobilenet_v2"):
        model = make(arch).eval()
        torch.jit.script(model).save(os.path.join(out, f"{arch}_random.pt"))
        print(arch, sum(p.numel() for p in model.parameters()), "parameters")
