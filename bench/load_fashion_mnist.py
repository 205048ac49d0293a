#!/usr/bin/python3
"""Write Fashion-MNIST as PostgreSQL COPY text for a table
    (id int, tenant text, features real[], label int)

Reads the IDX files (gzip'd) shipped by Debian's dataset-fashion-mnist package
with the standard library only, so the benchmark needs nothing beyond python3.

    load_fashion_mnist.py --split train --tenants 300 | psql -c "COPY fmnist FROM STDIN"

Row i (0-based position in the IDX file) gets id = i and tenant
't' || zero-padded (i mod N).  Features are the 784 pixels p/255 in row-major
order, written with at most 4 significant digits (0 and 1 exactly).

--task rotate|label_shift builds the heterogeneous-tenant protocol of the FLoRAL
paper: tenant k belongs to group c = k mod --groups;
  rotate:      the 28x28 image of group c is rotated 90*c degrees counter-clockwise
  label_shift: the label of group c becomes (label + c) mod 10
"""
import argparse
import gzip
import operator
import os
import struct
import sys

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
IMAGE_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
LABEL_MAGIC = 0x00000801  # unsigned byte, 1 dimension


def read_idx(path, magic, ndims):
    """Return (dims, payload bytes) of an IDX file, checking its header."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    got_magic = struct.unpack_from(">I", data, 0)[0]
    if got_magic != magic:
        sys.exit("%s: bad IDX magic 0x%08x (expected 0x%08x)" % (path, got_magic, magic))
    dims = struct.unpack_from(">%dI" % ndims, data, 4)
    header = 4 + 4 * ndims
    expected = header
    n = 1
    for d in dims:
        n *= d
    expected += n
    if len(data) != expected:
        sys.exit("%s: %d bytes, header says %d" % (path, len(data), expected))
    return dims, memoryview(data)[header:]


def pixel_strings():
    """The 256 possible feature strings, computed once.

    p/255 with %.4g: 4 significant digits, trailing zeros dropped, so 0 -> '0',
    255 -> '1', 1 -> '0.003922', 128 -> '0.502'.  float4 parses each to the
    nearest real, within 5e-4 relative of p/255."""
    return ["%.4g" % (p / 255.0) for p in range(256)]


def rotation_index(rows, cols, quarter_turns):
    """Source pixel index for each destination pixel of a rotation by
    90*quarter_turns degrees counter-clockwise (numpy.rot90 convention):
    one CCW quarter turn maps dst[r][c] = src[c][cols-1-r] (square images)."""
    idx = list(range(rows * cols))
    for _ in range(quarter_turns % 4):
        if rows != cols:
            sys.exit("rotation needs square images")
        idx = [idx[c * cols + (cols - 1 - r)] for r in range(rows) for c in range(cols)]
    return idx


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--split", choices=["train", "test"], default="train")
    ap.add_argument("--tenants", type=int, default=1, help="number of tenants N (tenant of row i is i mod N)")
    ap.add_argument("--limit", type=int, default=None, help="emit only the first LIMIT rows")
    ap.add_argument("--task", choices=["none", "rotate", "label_shift"], default="none")
    ap.add_argument("--groups", type=int, default=4, help="number of tenant groups for --task")
    ap.add_argument("--data-dir", default=os.environ.get("FASHION_MNIST_DIR", DEFAULT_DIR))
    args = ap.parse_args()
    if args.tenants < 1 or args.groups < 1:
        ap.error("--tenants and --groups must be >= 1")

    prefix = "train" if args.split == "train" else "t10k"
    (n, rows, cols), pixels = read_idx(
        os.path.join(args.data_dir, prefix + "-images-idx3-ubyte.gz"), IMAGE_MAGIC, 3)
    (nl,), labels = read_idx(
        os.path.join(args.data_dir, prefix + "-labels-idx1-ubyte.gz"), LABEL_MAGIC, 1)
    if n != nl:
        sys.exit("image count %d != label count %d" % (n, nl))
    if args.limit is not None:
        n = min(n, max(0, args.limit))

    npix = rows * cols
    pix = pixel_strings()
    pix_lookup = pix.__getitem__
    # Zero-padded tenant names sort in numeric order; at least 3 digits (t000).
    width = max(3, len(str(args.tenants - 1)))
    tenant_names = ["t%0*d" % (width, k) for k in range(args.tenants)]

    # Per-group pixel permutation (rotation), as an itemgetter so that the
    # gather runs in C; None means identity (iterate the bytes directly).
    groups = args.groups if args.task != "none" else 1
    gathers = []
    for c in range(groups):
        if args.task == "rotate" and c % 4 != 0:
            gathers.append(operator.itemgetter(*rotation_index(rows, cols, c)))
        else:
            gathers.append(None)
    label_add = [c if args.task == "label_shift" else 0 for c in range(groups)]

    out = sys.stdout.buffer
    chunk = []
    join = ",".join
    for i in range(n):
        k = i % args.tenants
        c = k % groups
        img = pixels[i * npix:(i + 1) * npix]
        g = gathers[c]
        vals = g(img) if g is not None else img
        label = (labels[i] + label_add[c]) % 10
        chunk.append("%d\t%s\t{%s}\t%d\n" % (i, tenant_names[k], join(map(pix_lookup, vals)), label))
        if len(chunk) >= 1000:
            out.write("".join(chunk).encode("ascii"))
            chunk.clear()
    if chunk:
        out.write("".join(chunk).encode("ascii"))
    out.flush()


if __name__ == "__main__":
    try:
        main()
    except BrokenPipeError:
        # e.g. piped into head: not an error worth a traceback
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(1)
