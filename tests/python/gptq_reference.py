"""A straightforward reference implementation of GPTQ (Frantar et al., 2022, Algorithm 1 with lazy batch
updates), written from the paper for the test of bayesq's C++ implementation.

usage: gptq_reference.py CASES_FILE

CASES_FILE (written by the C++ test with torch::pickle_save) is a dict with, per case "<name>": the weights
"<name>/W" [rows, cols], the Hessian "<name>/H" [cols, cols], bayesq's result "<name>/Q", and the settings
"<name>/bits", "<name>/act_order", "<name>/group" (0: per row), "<name>/percdamp", "<name>/block", and
"<name>/dynamic" (1: each group's grid from the weights when the loop reaches it; else fixed up front). Exits 1 if
any case differs by more than 1e-5 (relative to the weights' scale).
"""
import sys

import torch


def minmax_grid(w, bits):
    """Per-row asymmetric min-max grid with zero in range; returns (scale, zero) as in the paper's code."""
    maxq = 2 ** bits - 1
    lo = torch.minimum(w.min(1).values, torch.zeros(w.shape[0]))
    hi = torch.maximum(w.max(1).values, torch.zeros(w.shape[0]))
    both_zero = (lo == 0) & (hi == 0)
    lo[both_zero], hi[both_zero] = -1.0, 1.0
    scale = (hi - lo) / maxq
    zero = torch.round(-lo / scale)
    return scale, zero, maxq


def quantize(x, scale, zero, maxq):
    q = torch.clamp(torch.round(x / scale) + zero, 0, maxq)
    return scale * (q - zero)


def gptq(W, H, bits, act_order, group, percdamp, block, dynamic=False):
    W = W.clone().float()
    H = H.clone().float()
    cols = W.shape[1]
    scale, zero, maxq = minmax_grid(W, bits)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    groups = []
    if group and not dynamic:
        # Static groups: grids from the original columns, so groups stay consecutive under act-order.
        for g in range(0, cols, group):
            groups.append(minmax_grid(W[:, g:g + group], bits))
    perm = torch.arange(cols)
    if act_order:
        perm = torch.argsort(torch.diag(H), descending=True)
        W = W[:, perm]
        H = H[perm][:, perm]
    H[range(cols), range(cols)] += percdamp * torch.mean(torch.diag(H))
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    Q = torch.zeros_like(W)
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            w = W1[:, i]
            d = Hinv1[i, i]
            if group and dynamic:
                # The grid of the group starting here, from the weights as the outer W holds them now (the
                # updates of earlier lazy blocks; in the permuted order under act-order), as the paper's code does.
                if (i1 + i) % group == 0:
                    scale, zero, maxq = minmax_grid(W[:, i1 + i:i1 + i + group], bits)
            elif group:
                scale, zero, maxq = groups[int(perm[i1 + i]) // group]
            q = quantize(w, scale, zero, maxq)
            Q1[:, i] = q
            err = (w - q) / d
            W1[:, i:] -= err.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err
        Q[:, i1:i2] = Q1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    if act_order:
        Q = Q[:, torch.argsort(perm)]
    return Q


def main():
    try:  # the test's own file; torch >= 2.6 loads only plain tensors unless told otherwise
        cases = torch.load(sys.argv[1], weights_only=False)
    except TypeError:  # torch before 1.13 has no weights_only
        cases = torch.load(sys.argv[1])
    names = sorted({k.split("/")[0] for k in cases})
    failed = False
    for name in names:
        get = lambda key: cases[f"{name}/{key}"]  # noqa: E731
        dynamic = bool(cases.get(f"{name}/dynamic", 0))
        Q = gptq(get("W"), get("H"), int(get("bits")), bool(get("act_order")), int(get("group")),
                 float(get("percdamp")), int(get("block")), dynamic)
        scale = get("W").abs().max().item()
        err = (Q - get("Q")).abs().max().item()
        ok = err <= 1e-5 * scale
        failed |= not ok
        print(f"{name}: max |reference - bayesq| = {err:.3g} (weights up to {scale:.3g}) {'ok' if ok else 'MISMATCH'}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
