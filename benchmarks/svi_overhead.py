"""SVI overhead: one epoch of SVI on the gated network vs one epoch of plain PyTorch training.

Same network (LeNet-5-Caffe), same minibatches, same device, same optimiser (Adam), in one process; the
ratio is printed. The plain epoch is ``cross_entropy + backward + step``; the SVI epoch is the full Pyro
``TraceMeanField_ELBO`` loss (gate sampling by inverse CDF, analytic KL, scaled likelihood) + backward + step.

Usage::

    python benchmarks/svi_overhead.py [--data ../shared/data] [--device cpu] [--batches 100] [--batch-size 100]

Data: real MNIST images when ``--data`` holds them, otherwise random MNIST-shaped tensors (the timing does not
depend on pixel values). Target (issue 2): ratio <= 1.3 on CPU.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import pyro
import torch
import torch.nn.functional as F

from pyroprune.data import TensorSplit, load_mnist
from pyroprune.gates import GatedNet
from pyroprune.guides import TruncatedLogNormalGuide
from pyroprune.infer.svi import elbo_loss
from pyroprune.models import LeNet5Caffe


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_plain(net, batches, device) -> float:
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    _sync(device)
    t0 = time.perf_counter()
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        opt.step()
    _sync(device)
    return time.perf_counter() - t0


def time_svi(gated, guide, batches, num_data, device) -> float:
    loss_fn = elbo_loss(gated, guide, num_data)
    opt = torch.optim.Adam([*gated.parameters(), *guide.parameters()], lr=1e-3)
    _sync(device)
    t0 = time.perf_counter()
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        loss_fn(x, y).backward()
        opt.step()
    _sync(device)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--batches", type=int, default=100, help="minibatches per timed epoch")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--repeats", type=int, default=5, help="timed epochs of each kind (alternating)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave torch's default)")
    args = p.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    pyro.set_rng_seed(0)
    n = args.batches * args.batch_size
    try:
        train = load_mnist(args.data, device=device).train
        source = f"MNIST from {args.data}"
    except FileNotFoundError:
        train = TensorSplit(torch.randn(n, 1, 28, 28, device=device), torch.randint(0, 10, (n,), device=device))
        source = "random MNIST-shaped tensors"
    batches = list(TensorSplit(train.x[:n], train.y[:n]).batches(args.batch_size))

    plain_net = LeNet5Caffe().to(device)
    gated = GatedNet(LeNet5Caffe().to(device), batches[0][0][:2], num_data=len(train))
    guide = TruncatedLogNormalGuide(gated).to(device)
    # warm-up (allocator, autograd graph caches)
    time_plain(plain_net, batches[:5], device)
    time_svi(gated, guide, batches[:5], len(train), device)
    plain, svi = [], []
    for _ in range(args.repeats):
        plain.append(time_plain(plain_net, batches, device))
        svi.append(time_svi(gated, guide, batches, len(train), device))
    tp, ts = statistics.median(plain), statistics.median(svi)
    print(f"data: {source}; LeNet-5-Caffe; {args.batches} batches of {args.batch_size}; device {device}; "
          f"torch threads {torch.get_num_threads()}")
    print(f"plain epoch  {1e3 * tp:9.1f} ms   (median of {args.repeats})")
    print(f"SVI epoch    {1e3 * ts:9.1f} ms   (median of {args.repeats})")
    print(f"ratio SVI / plain = {ts / tp:.3f}   (target <= 1.3)")


if __name__ == "__main__":
    main()
