"""Prints a markdown table from `bayesq eval --json` results.

    python3 bench/table.py LABEL=EVAL_JSON[:MODEL_FILE] ...

EVAL_JSON holds one result, or an array of them from one `bayesq eval --model A --model B ...`, of which the
row takes the one whose "model" is MODEL_FILE.

Columns: model, file size, top-1, NLL, ECE, agreement with the reference and mean KL(reference || model).
"""
import json
import os
import sys


def main():
    rows = []
    for arg in sys.argv[1:]:
        label, rest = arg.split("=", 1)
        path, _, model = rest.partition(":")
        with open(path) as f:
            r = json.load(f)
        if isinstance(r, list):
            matches = [e for e in r if e.get("model") == model]
            if len(matches) != 1:
                sys.exit(f"table.py: {path} holds {len(matches)} results for model '{model}'")
            r = matches[0]
        size = os.path.getsize(model) if model else None
        rows.append((label, size, r))
    print("| model | file (KiB) | top-1 (%) | NLL | ECE (%) | agreement (%) | KL(float‖model) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, size, r in rows:
        agreement = f"{100 * r['agreement']:.2f}" if "agreement" in r else "-"
        kl = f"{r['mean_kl']:.5f}" if "mean_kl" in r else "-"
        kib = f"{size / 1024:.1f}" if size is not None else "-"
        print(f"| {label} | {kib} | {100 * r['top1']:.2f} | {r['nll']:.4f} | {100 * r['ece']:.2f} | {agreement} | {kl} |")


if __name__ == "__main__":
    main()
