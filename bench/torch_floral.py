#!/usr/bin/python3
"""FLoRAL rounds in PyTorch: the reference bench/round_cost.sh times floral against.

The same work as floral_train + floral_aggregate (FLORAL.md), with the data
held in memory as tensors, one thread:

  per round, for each of the round's tenants, starting from the round's
  global parameters and the tenant's own mixture logits z: E epochs of
  mini-batch SGD (shuffled, batch B, the last batch may be smaller), lr on
  the base and the adaptors, router_lr on z; router noise u ~ U[0,1)^C drawn
  per batch, pi = softmax(z + noise * u), m = max(pi, min_prob); layer
  h = act(x W^T + b + alpha * sum_c m_c (x U_c^T V_c^T + beta_c)); mean
  softmax cross-entropy; before each step the adaptor gradients are
  preconditioned, grad_U <- (V^T V + eps I)^-1 grad_U and
  grad_V <- grad_V (U U^T + eps I)^-1 (factors before the step);
  then FloralAvg over the round's tenants (server_lr 1): base weighted by
  n_k, adaptor c weighted by n_k * pi_kc with pi_k = softmax(z_k), no noise.

Tenants and rounds are those of round_cost.sh: Fashion-MNIST training row i
belongs to tenant i mod T (rows-per-tenant rows each, the first
T * rows-per-tenant images), tenant k to group k mod groups (rotate or
label_shift, as load_fashion_mnist.py builds them), and round r trains the
tenants k with k mod (T / per-round) = r mod (T / per-round).

Output, one fact per line ("key value ..."):
  torch <version> / threads <n>
  round <r> seconds <s> tenants <n> examples <n> loss <examples-weighted mean>
  train_seconds <all rounds: local training + aggregation, data already in memory;
      after one untimed warm-up tenant>
  final_round_loss <the last round's examples-weighted mean training loss>
  test_examples <n> test_loss <l> test_accuracy <a>   (with --test: every
      tenant's personalised mixture on the test split, as floral_evaluate)
"""
import argparse
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import load_fashion_mnist as fm  # noqa: E402  (the same reader and transforms as the SQL tables)


def rank_for(rho, fan_in, fan_out):
    """FLORAL.md, "Rank" (as floral_rank_for in src/model.c)."""
    if rho < 1.0:
        return int(max(1.0, math.floor(rho * fan_in * fan_out / (fan_in + fan_out))))
    return int(round(rho))


def load_split(split, tenants, limit, task, groups, data_dir):
    """Features (n x 784, float32, the values COPY stores) and labels of a split,
    with each row's tenant index (row i -> i mod tenants) and the group's transform."""
    prefix = "train" if split == "train" else "t10k"
    (n, rows, cols), pixels = fm.read_idx(os.path.join(data_dir, prefix + "-images-idx3-ubyte.gz"),
                                          fm.IMAGE_MAGIC, 3)
    (_,), labels = fm.read_idx(os.path.join(data_dir, prefix + "-labels-idx1-ubyte.gz"),
                               fm.LABEL_MAGIC, 1)
    if limit is not None:
        n = min(n, limit)
    # the 256 pixel values exactly as the COPY text has them (p/255, 4 digits)
    table = torch.tensor([float(s) for s in fm.pixel_strings()], dtype=torch.float32)
    raw = torch.frombuffer(bytearray(pixels[:n * rows * cols]), dtype=torch.uint8)
    X = table[raw.long()].view(n, rows * cols)
    y = torch.frombuffer(bytearray(labels[:n]), dtype=torch.uint8).long()
    tenant = torch.arange(n) % tenants
    group = tenant % groups
    if task != "none":
        for c in range(1, groups):
            sel = group == c
            if task == "rotate" and c % 4 != 0:
                idx = torch.tensor(fm.rotation_index(rows, cols, c))
                X[sel] = X[sel][:, idx]
            elif task == "label_shift":
                y[sel] = (y[sel] + c) % 10
    return X, y, tenant


class Model:
    """The shared parameters: per layer W (out x in), b, U (C x r x in), V (C x out x r), beta (C x out)."""

    def __init__(self, layers, C, rho, gen):
        self.C = C
        self.layers = []
        for fan_in, fan_out in zip(layers[:-1], layers[1:]):
            bound = 1.0 / math.sqrt(fan_in)
            layer = {
                "W": (torch.rand(fan_out, fan_in, generator=gen) * 2 - 1) * bound,
                "b": (torch.rand(fan_out, generator=gen) * 2 - 1) * bound,
            }
            if C > 0:
                r = rank_for(rho, fan_in, fan_out)
                ub = math.sqrt(6.0 / fan_in)
                layer["U"] = (torch.rand(C, r, fan_in, generator=gen) * 2 - 1) * ub
                layer["V"] = torch.zeros(C, fan_out, r)
                layer["beta"] = torch.zeros(C, fan_out)
            self.layers.append(layer)

    def flat(self):
        return [layer[k] for layer in self.layers for k in sorted(layer)]

    def nparams(self):
        return sum(p.numel() for p in self.flat())


KEYS_BASE = ("W", "b")
KEYS_ADAPTOR = ("U", "V", "beta")


def forward(layers, x, m, alpha):
    """The FLoRAL MLP on a batch; layers are dicts of tensors, m the clamped mixture (C) or None."""
    h = x
    last = len(layers) - 1
    for l, p in enumerate(layers):
        z = F.linear(h, p["W"], p["b"])
        if m is not None:
            C, r, fan_in = p["U"].shape
            fan_out = p["V"].shape[1]
            # every adaptor's projection in one product, scaled by its mixture weight
            a = h @ p["U"].reshape(C * r, fan_in).t()
            a = a * m.repeat_interleave(r)
            z = z + alpha * (a @ p["V"].permute(0, 2, 1).reshape(C * r, fan_out) + m @ p["beta"])
        h = torch.relu(z) if l < last else z
    return h


def precondition(p, gU, gV, eps):
    """grad_U <- (V^T V + eps I)^-1 grad_U, grad_V <- grad_V (U U^T + eps I)^-1, all adaptors at once."""
    U, V = p["U"], p["V"]
    r = U.shape[1]
    eye = torch.eye(r) * eps
    gU = torch.linalg.solve(V.transpose(1, 2) @ V + eye, gU)
    gV = torch.linalg.solve(U @ U.transpose(1, 2) + eye, gV.transpose(1, 2)).transpose(1, 2)
    return gU, gV


def train_tenant(glob, z0, X, y, args, gen):
    """Local training of one tenant; returns (its parameters, its new logits, mean loss of the last epoch)."""
    C = glob.C
    layers = [{k: v.clone().requires_grad_(True) for k, v in layer.items()} for layer in glob.layers]
    params = [layer[k] for layer in layers for k in sorted(layer)]
    z = z0.clone().requires_grad_(True) if C > 0 else None
    n = X.shape[0]
    epoch_loss = 0.0
    for _ in range(args.epochs):
        perm = torch.randperm(n, generator=gen)
        epoch_loss = 0.0
        for start in range(0, n, args.batch):
            idx = perm[start:start + args.batch]
            xb, yb = X[idx], y[idx]
            m = None
            if C > 0:
                u = torch.rand(C, generator=gen)
                pi = torch.softmax(z + args.noise * u, dim=0)
                m = torch.clamp(pi, min=args.min_prob)
            loss = F.cross_entropy(forward(layers, xb, m, args.alpha), yb)
            wrt = params + ([z] if C > 1 else [])
            grads = dict(zip(map(id, wrt), torch.autograd.grad(loss, wrt)))
            with torch.no_grad():
                for layer in layers:
                    if C > 0:
                        gU, gV = precondition(layer, grads[id(layer["U"])], grads[id(layer["V"])],
                                              args.eps)
                        grads[id(layer["U"])], grads[id(layer["V"])] = gU, gV
                for p in params:
                    p.sub_(grads[id(p)], alpha=args.lr)
                if C > 1:
                    z.sub_(grads[id(z)], alpha=args.router_lr)
            epoch_loss += loss.item() * idx.numel()
    with torch.no_grad():
        out = [{k: v.detach() for k, v in layer.items()} for layer in layers]
        z_new = z.detach() if C > 0 else None
    return out, z_new, epoch_loss / n


def floral_avg(glob, contributions):
    """FloralAvg: base by n_k, adaptor c by n_k * pi_kc (double-precision sums); server_lr 1."""
    C = glob.C
    N = sum(n for n, _, _ in contributions)
    M = torch.zeros(C, dtype=torch.float64)
    for n, pi, _ in contributions:
        if C > 0:
            M += n * pi.double()
    for l, layer in enumerate(glob.layers):
        for k in KEYS_BASE:
            s = torch.zeros_like(layer[k], dtype=torch.float64)
            for n, _, params in contributions:
                s.add_(params[l][k].double(), alpha=n)
            layer[k] = (s / N).float()
        if C == 0:
            continue
        for k in KEYS_ADAPTOR:
            s = torch.zeros_like(layer[k], dtype=torch.float64)
            for n, pi, params in contributions:
                w = (n * pi.double()).view(C, *([1] * (layer[k].dim() - 1)))
                s.add_(params[l][k].double() * w)
            used = M > 0
            w = M.clamp(min=1e-300).view(C, *([1] * (layer[k].dim() - 1)))
            avg = (s / w).float()
            # an adaptor nobody used keeps its value
            layer[k] = torch.where(used.view_as(w), avg, layer[k])


def evaluate(glob, logits, X, y, tenant, args):
    """Personalised loss and accuracy: each tenant's softmax(z) (no noise), clamped."""
    C = glob.C
    loss_sum, correct = 0.0, 0
    with torch.no_grad():
        for k in torch.unique(tenant).tolist():
            sel = tenant == k
            m = None
            if C > 0:
                m = torch.clamp(torch.softmax(logits[k], dim=0), min=args.min_prob)
            out = forward(glob.layers, X[sel], m, args.alpha)
            loss_sum += F.cross_entropy(out, y[sel], reduction="sum").item()
            correct += (out.argmax(dim=1) == y[sel]).sum().item()
    n = X.shape[0]
    return n, loss_sum / n, correct / n


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", default="784,200,10")
    ap.add_argument("--adaptors", type=int, default=4, help="C; 0 is FedAvg")
    ap.add_argument("--rank", type=float, default=0.01, help="rho, as floral_create_model's rank")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--tenants", type=int, default=300)
    ap.add_argument("--per-round", type=int, default=30)
    ap.add_argument("--rows-per-tenant", type=int, default=200)
    ap.add_argument("--task", choices=["none", "rotate", "label_shift"], default="rotate")
    ap.add_argument("--groups", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--router-lr", type=float, default=0.1)
    ap.add_argument("--noise", type=float, default=1.0)
    ap.add_argument("--min-prob", type=float, default=0.01)
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--eps", type=float, default=1e-5, help="preconditioning eps")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--test", action="store_true", help="evaluate on the test split at the end")
    ap.add_argument("--data-dir", default=os.environ.get("FASHION_MNIST_DIR", fm.DEFAULT_DIR))
    args = ap.parse_args()
    if args.tenants % args.per_round != 0:
        ap.error("--tenants must be a multiple of --per-round")

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    print("torch", torch.__version__)
    print("threads", torch.get_num_threads())
    gen = torch.Generator().manual_seed(args.seed)
    layers = [int(w) for w in args.layers.split(",")]

    T = args.tenants
    X, y, tenant = load_split("train", T, T * args.rows_per_tenant, args.task, args.groups,
                              args.data_dir)
    data = [(X[tenant == k].contiguous(), y[tenant == k].contiguous()) for k in range(T)]
    glob = Model(layers, args.adaptors, args.rank, gen)
    C = args.adaptors
    logits = torch.zeros(T, max(C, 1))
    print("parameters", glob.nparams())
    print("ranks", ",".join(str(l["U"].shape[1]) for l in glob.layers) if C > 0 else "-")

    # One untimed tenant first, thrown away: PyTorch sets up its kernels and
    # allocator on the first calls (floral's session has loaded its library
    # and model before its clock starts, too).
    train_tenant(glob, logits[0][:C] if C > 0 else None, data[0][0], data[0][1], args,
                 torch.Generator().manual_seed(args.seed + 1))

    cohorts = T // args.per_round
    total = 0.0
    last_loss = float("nan")
    for r in range(args.rounds):
        members = [k for k in range(T) if k % cohorts == r % cohorts]
        t0 = time.perf_counter()
        contributions = []
        loss_n = 0.0
        examples = 0
        for k in members:
            Xk, yk = data[k]
            params, z_new, loss = train_tenant(glob, logits[k][:C] if C > 0 else None, Xk, yk, args, gen)
            pi = None
            if C > 0:
                logits[k][:C] = z_new
                pi = torch.softmax(z_new, dim=0)
            contributions.append((Xk.shape[0], pi, params))
            loss_n += loss * Xk.shape[0]
            examples += Xk.shape[0]
        floral_avg(glob, contributions)
        dt = time.perf_counter() - t0
        total += dt
        last_loss = loss_n / examples
        print("round %d seconds %.4f tenants %d examples %d loss %.4f" % (r, dt, len(members), examples, last_loss))
        sys.stdout.flush()
    print("train_seconds %.4f" % total)
    print("final_round_loss %.4f" % last_loss)
    if args.test:
        Xt, yt, tt = load_split("test", T, None, args.task, args.groups, args.data_dir)
        n, loss, acc = evaluate(glob, logits[:, :C] if C > 0 else logits, Xt, yt, tt, args)
        print("test_examples %d test_loss %.4f test_accuracy %.4f" % (n, loss, acc))


if __name__ == "__main__":
    main()
