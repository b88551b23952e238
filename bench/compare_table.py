"""Prints the rows of `bayesq compare --json-output` files (complete or partial) as one markdown table.

    python3 bench/compare_table.py COMPARE_JSON... [--sort] [--no-distill]

"quantize s" includes distillation; "peak GPU MiB" is the device memory peak of the row (empty on the CPU).
--sort orders rows by the budget asked for, then by method, with the float row first; --no-distill leaves out
the distilled rows (the distillation table of BENCHMARKS.md has them).
"""
import gzip
import json
import sys


def main():
    paths = [a for a in sys.argv[1:] if not a.startswith("--")]
    rows = []
    for path in paths:
        with (gzip.open(path, "rt") if path.endswith(".gz") else open(path)) as f:
            doc = json.load(f)
        for r in doc["rows"]:
            if r["method"] == "float" and any(x["method"] == "float" for x in rows):
                continue
            if "--no-distill" in sys.argv and "+distill" in r["method"]:
                continue
            rows.append(r)
    if "--sort" in sys.argv:
        rows.sort(key=lambda r: (r["method"] != "float", r.get("bits", 0), r.get("label", r["method"])))
    print("| method | bits asked | avg bits | w/o metadata | file MB | top-1 % | NLL | ECE % | agreement % "
          "| mean KL | quantize s | peak GPU MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        float_row = r["method"] == "float"
        label = r.get("label", r["method"])
        if r.get("infeasible"):  # a budget below the method's smallest allocation: no model, no figures
            print(f"| {label} | {r['bits']:g} | infeasible: needs at least {r['smallest_bits']:.4f} |"
                  + " |" * 9)
            continue
        if "+distill" in r["method"] and "distill" not in label:  # files written before labels said so
            label += " + distill 500"
        cells = [
            label,
            "" if float_row else f"{r['bits']:g}",
            "32" if float_row else f"{r['average_bits']:.3f}",
            "" if float_row else f"{r['average_bits_without_metadata']:.3f}",
            f"{r['file_bytes'] / 1e6:.2f}",
            f"{100 * r['top1']:.2f}",
            f"{r['nll']:.4f}",
            f"{100 * r['ece']:.2f}",
            f"{100 * r['agreement']:.2f}",
            f"{r['mean_kl']:.4f}",
            "" if float_row else f"{r['timings'].get('quantize_total', 0.0) + r['timings'].get('distill', 0.0):.1f}",
            "" if float_row or not r.get("peak_device_bytes") else f"{r['peak_device_bytes'] / 2**20:.0f}",
        ]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
