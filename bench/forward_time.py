"""Where a measured table's forward spends its time on a GPU: one eval forward of a random benchmark model on a
batch of 128 Fashion-MNIST-sized images, eager (TorchScript, as bayesq runs it) and replayed as a CUDA graph, with
cuDNN deterministic and TF32 off (bayesq's default) or on.
    python3 bench/forward_time.py [--batch 128] [--runs 50]     prints one JSON line per setting
Eager minus replay is the host's share (interpreter and launches); replay is the device's."""
import argparse
import json
import time

import torch

import models


def timed(fn, runs):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(runs):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / runs * 1000.0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.manual_seed(0)
    x = torch.rand(args.batch, 1, 28, 28, device="cuda")
    for arch in ("resnet50", "mobilenet_v2"):
        model = torch.jit.script(models.make(arch).eval()).cuda()
        for tf32 in (False, True):
            torch.backends.cudnn.allow_tf32 = tf32
            torch.backends.cuda.matmul.allow_tf32 = tf32
            with torch.no_grad():
                eager = timed(lambda: model(x), args.runs)
                stream = torch.cuda.Stream()
                stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(stream):
                    for _ in range(3):
                        model(x)
                torch.cuda.current_stream().wait_stream(stream)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    model(x)
                replay = timed(graph.replay, args.runs)
                if not tf32:  # the kernels behind the full-fp32 forward, by device time
                    from torch.profiler import ProfilerActivity, profile
                    with profile(activities=[ProfilerActivity.CUDA]) as prof:
                        for _ in range(5):
                            model(x)
                        torch.cuda.synchronize()
                    top = sorted(prof.key_averages(), key=lambda e: -e.self_device_time_total)[:6]
                    kernels = [{"kernel": e.key[:90], "ms_per_forward": round(e.self_device_time_total / 5000.0, 3),
                                "calls_per_forward": e.count // 5} for e in top]
                    print(json.dumps({"arch": arch, "top_kernels_fp32": kernels}), flush=True)
            print(json.dumps({"arch": arch, "batch": args.batch, "tf32": tf32, "eager_ms": round(eager, 3),
                              "replay_ms": round(replay, 3), "torch": torch.__version__,
                              "device": torch.cuda.get_device_name()}), flush=True)


if __name__ == "__main__":
    main()
