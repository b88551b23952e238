#!/usr/bin/env bash
# Renders an HTML report in headless Chromium (JavaScript off) to a PNG and fails on a blank or error page:
#   scripts/check_report.sh [REPORT.html] [OUT.png]
# Default: the quickstart's report, work/demo/small_cnn-default3.html (run scripts/quickstart.sh first).
# Installs Debian's chromium when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
html=${1:-work/demo/small_cnn-default3.html}
png=${2:-${html%.html}.png}
[ -f "$html" ] || { echo "check_report: no such report: $html (run scripts/quickstart.sh first)" >&2; exit 3; }
command -v chromium >/dev/null || scripts/setup.sh chromium
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
rm -f "$png"
# JavaScript off, as in a browser where it is disabled (the page has no script: its charts are inline SVG).
timeout 120 chromium --headless=new --no-sandbox --disable-gpu --disable-dev-shm-usage --hide-scrollbars \
  --disable-javascript --user-data-dir="$profile" --window-size=1100,${HEIGHT:-4200} --screenshot="$png" \
  "file://$(realpath "$html")" > /dev/null 2>&1 || true
[ -s "$png" ] || { echo "check_report: chromium wrote no picture of $html" >&2; exit 1; }
# A blank page is one colour; an error page has no chart. Count the distinct colours and look for the SVG text.
/usr/bin/python3 - "$png" "$html" <<'PY'
import sys, zlib, struct
png, html = sys.argv[1], sys.argv[2]
data = open(png, 'rb').read()
assert data[:8] == b'\x89PNG\r\n\x1a\n', 'not a PNG'
pos, chunks, width, height, ctype = 8, [], 0, 0, 0
while pos < len(data):
    n, kind = struct.unpack('>I4s', data[pos:pos + 8])
    body = data[pos + 8:pos + 8 + n]
    if kind == b'IHDR':
        width, height, depth, ctype = struct.unpack('>IIBB', body[:10])
    elif kind == b'IDAT':
        chunks.append(body)
    pos += 12 + n
raw = zlib.decompress(b''.join(chunks))
channels = {2: 3, 6: 4}[ctype]
stride = width * channels + 1
colours = set()
for y in range(0, height, 7):
    row = raw[y * stride + 1:(y + 1) * stride]  # filter byte skipped; filtered bytes still tell blank from not
    for x in range(0, width * channels, channels * 11):
        colours.add(row[x:x + 3])
page = open(html, encoding='utf-8').read()
if len(colours) < 8:
    sys.exit(f'check_report: {png} looks blank ({len(colours)} colours sampled)')
if '<svg' not in page or 'bayesq' not in page:
    sys.exit(f'check_report: {html} is not a bayesq report with charts')
print(f'check_report: {png}: {width}x{height}, {len(colours)} colours sampled; looks like a page')
PY
