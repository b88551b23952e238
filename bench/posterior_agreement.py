"""Compares two posterior files (bayesq calibrate -o X.bqp) block by block: the per-block Hutchinson trace
estimates must agree within sampling error, |t_a - t_b| <= 4 sqrt(se_a^2 + se_b^2).

    python3 bench/posterior_agreement.py A.bqp B.bqp
"""
import json
import math
import struct
import sys


def header(path):
    with open(path, "rb") as f:
        assert f.read(4) == b"BQP1", path
        (length,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(length))


a, b = header(sys.argv[1]), header(sys.argv[2])
worst, failures = 0.0, 0
for x, y in zip(a["blocks"], b["blocks"]):
    se = math.hypot(x["trace_standard_error"], y["trace_standard_error"])
    z = abs(x["trace"] - y["trace"]) / se if se > 0 else 0.0
    worst = max(worst, z)
    failures += z > 4
    print(f"{x['name']:50s} {a['device']}: {x['trace']:.5g} ± {x['trace_standard_error']:.2g}   "
          f"{b['device']}: {y['trace']:.5g} ± {y['trace_standard_error']:.2g}   z = {z:.2f}")
print(f"{len(a['blocks'])} blocks, largest |difference| / combined standard error = {worst:.2f}, "
      f"{failures} above 4; calibration {a['seconds']:.1f} s ({a['device']}) vs {b['seconds']:.1f} s ({b['device']})")
sys.exit(1 if failures else 0)
