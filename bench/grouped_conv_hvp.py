"""Issue 17 item 4: Hutchinson's double backward through MobileNetV2's depthwise convolutions, as the model has them
and unfolded (im2col and a product-sum over the kernel window, as src/calibrate/grouped_conv.cpp rewrites them),
on one device. Random-initialised weights (the time does not depend on their values), Fashion-MNIST-shaped input.

    python3 bench/grouped_conv_hvp.py [--device cuda] [--batch 32] [--batches 4] [--probes 8] [--tf32 1] [--json OUT]

Prints one JSON object: seconds of one forward + backward and of the Hutchinson pass (one create_graph backward,
then `probes` Hessian-vector products), summed over the batches, for both forms, and how far a block's v.Hv moves
between them with the same probes (--tf32 0 turns off TF32 in cuDNN's convolutions, which PyTorch allows by
default and bayesq does not change).
"""
import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import models  # noqa: E402


class Unfolded(torch.nn.Module):
    """A depthwise nn.Conv2d computed as im2col and a product-sum over the kernel window."""

    def __init__(self, conv):
        super().__init__()
        self.conv = conv

    def forward(self, x):
        c = self.conv
        n, channels, h, w = x.shape
        kh, kw = c.kernel_size
        ho = (h + 2 * c.padding[0] - c.dilation[0] * (kh - 1) - 1) // c.stride[0] + 1
        wo = (w + 2 * c.padding[1] - c.dilation[1] * (kw - 1) - 1) // c.stride[1] + 1
        cols = F.unfold(x, (kh, kw), c.dilation, c.padding, c.stride).view(n, channels, kh * kw, ho * wo)
        y = (cols * c.weight.reshape(1, channels, kh * kw, 1)).sum(2).view(n, channels, ho, wo)
        return y if c.bias is None else y + c.bias.view(1, channels, 1, 1)


def unfold_depthwise(module):
    count = 0
    for name, child in module.named_children():
        if isinstance(child, torch.nn.Conv2d) and child.groups > 1 and child.groups == child.in_channels == child.out_channels:
            setattr(module, name, Unfolded(child))
            count += 1
        else:
            count += unfold_depthwise(child)
    return count


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def run(model, batches, probes, device, seed):
    weights = [p for p in model.parameters() if p.dim() > 1]
    fb = calib = 0.0
    traces = []
    for b, x in enumerate(batches):
        synchronize(device)
        t = time.time()
        out = model(x)
        torch.autograd.grad(out.sum(), weights)
        synchronize(device)
        fb += time.time() - t
        t = time.time()
        out = model(x)
        p = F.softmax(out.detach(), 1)
        loss = -(p * F.log_softmax(out, 1)).sum()
        grads = torch.autograd.grad(loss, weights, create_graph=True)
        torch.manual_seed(seed + b)
        row = []
        for _ in range(probes):
            vs = [torch.randint(0, 2, w.shape, device=device).float() * 2 - 1 for w in weights]
            dot = sum((g * v).sum() for g, v in zip(grads, vs))
            hv = torch.autograd.grad(dot, weights, retain_graph=True)
            row.append(torch.stack([(h * v).sum() for h, v in zip(hv, vs)]))
        traces.append(torch.stack(row).double().cpu())
        synchronize(device)
        calib += time.time() - t
    return fb, calib, torch.stack(traces)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--probes", type=int, default=8)
    ap.add_argument("--tf32", type=int, default=1, help="cuDNN convolutions in TF32 (PyTorch's default) or not")
    ap.add_argument("--json")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.backends.cudnn.deterministic = True  # as bayesq runs
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.allow_tf32 = bool(args.tf32)
    torch.manual_seed(0)
    model = models.make("mobilenet_v2").eval().to(device)
    batches = [torch.rand(args.batch, 1, 28, 28, device=device) for _ in range(args.batches)]
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "batch": args.batch, "batches": args.batches, "probes": args.probes,
              "cudnn_tf32": bool(args.tf32)}
    run(model, batches[:1], 1, device, 0)  # warm-up
    fb, calib, keep = run(model, batches, args.probes, device, 100)
    result.update(keep_forward_backward_s=fb, keep_hutchinson_s=calib)
    result["unfolded_layers"] = unfold_depthwise(model)
    run(model, batches[:1], 1, device, 0)
    fb, calib, unfolded = run(model, batches, args.probes, device, 100)
    result.update(unfold_forward_backward_s=fb, unfold_hutchinson_s=calib)
    result["max_relative_difference_vHv"] = float(((keep - unfolded).abs() / keep.abs().clamp_min(1e-30)).max())
    # Per block over every batch and probe: sum |difference| / sum |v.Hv| (single v.Hv values can be near zero).
    per_block = (keep - unfolded).abs().sum((0, 1)) / keep.abs().sum((0, 1)).clamp_min(1e-30)
    result["max_block_relative_l1_vHv"] = float(per_block.max())
    result["median_block_relative_l1_vHv"] = float(per_block.median())
    for form in ("keep", "unfold"):
        result[form + "_ratio_per_probe"] = (result[form + "_hutchinson_s"] / args.probes) / result[form + "_forward_backward_s"]
    text = json.dumps(result)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
