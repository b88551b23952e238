"""Lists what a TorchScript model carries beside its parameters and buffers: tensor constants baked into the
graph (which `Module.to()` does not move) and, for every embedding lookup, where its weight comes from.

    python3 bench/model_tensors.py MODEL.pt [--device cuda]
"""
import argparse

import torch


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    m = torch.jit.load(args.model, map_location="cpu")
    m.to(args.device)
    want = torch.device(args.device).type
    params = list(m.named_parameters())
    buffers = list(m.named_buffers())
    print(f"{len(params)} parameters ({sum(p.requires_grad for _, p in params)} require grad), {len(buffers)} buffers")
    for name, t in params + buffers:
        if t.device.type != want:
            print("not moved:", name, tuple(t.shape), t.device)
    graph = m.inlined_graph
    constants = 0
    for node in graph.nodes():
        if node.kind() == "prim::Constant" and node.hasAttribute("value") and node.kindOf("value") == "t":
            v = node.t("value")
            constants += 1
            print("graph constant:", tuple(v.shape), v.dtype, v.device, "requires grad" if v.requires_grad else "")
        if node.kind() == "aten::embedding":
            weight = node.inputsAt(0).node()
            print("embedding weight from", weight.kind(), weight.s("name") if weight.hasAttribute("name") else "")
    print(f"{constants} tensor constants in the graph")


if __name__ == "__main__":
    main()
