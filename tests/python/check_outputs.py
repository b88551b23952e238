"""Python side of the interop test: stock torch.jit.load runs the packed and the fake model, and both give the
outputs libtorch computed (within 1e-5 relative).

usage: check_outputs.py PACKED FAKE DATA EXPECTED
"""
import sys

import torch

packed_path, fake_path, data_path, expected_path = sys.argv[1:5]
data = torch.load(data_path)
inputs = data["inputs"] if isinstance(data, dict) else data
if isinstance(inputs, torch.Tensor):
    inputs = (inputs,)
expected = torch.load(expected_path)
packed = torch.jit.load(packed_path)
fake = torch.jit.load(fake_path)
with torch.no_grad():
    y_packed = packed(*inputs)
    y_fake = fake(*inputs)
scale = expected.abs().max().item()
for name, y in (("packed", y_packed), ("fake", y_fake)):
    err = (y - expected).abs().max().item()
    if err > 1e-5 * max(scale, 1e-12):
        print(f"{name}: max difference {err} against libtorch (scale {scale})")
        sys.exit(1)
print("python outputs match libtorch:", tuple(y_packed.shape))
