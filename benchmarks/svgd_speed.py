"""SVGD speed: wall time of one SVGD step on gated LeNet-5-Caffe, against one SVI step of the same network.

Same gated network (``GatedNet(build_model("lenet5-caffe"))``, default LogUniform prior), same MNIST minibatches
of 128 on the device, one process:

* baseline -- one SVI step: :class:`~pyroprune.guides.TruncatedLogNormalGuide`,
  :func:`~pyroprune.infer.elbo_loss` (Pyro's ``TraceMeanField_ELBO``), ``backward``, Adam on the network weights
  and the guide (what :func:`~pyroprune.infer.fit_svi` does per minibatch);
* SVGD -- ``engine.step(x, y, check=False, num_data=N)`` of :class:`~pyroprune.infer.svgd.SVGD` (RBF kernel,
  median bandwidth) for ``K`` particles: one batched forward and backward pass over ``K x 128`` images (the
  particles folded into the batch), the Stein direction, Adam on the particles (the weights stay fixed);
* ``K = 1`` -- SVGD refuses a single particle (its repulsion vanishes: it is MAP); the step it would reduce to
  is timed instead: ``engine.log_density`` of one particle, ``torch.autograd.grad``, Adam on that particle.

Every step runs with Pyro's validation off, as ``fit_svi`` does after its first step. Each row alternates one
SVI step and one step of its own (warm-up pairs first, CUDA synchronised around each timed step); its ratio is the
median over the pairs, robust to a load that drifts during the run. Large ``K`` gets fewer timed pairs.

Usage::

    python benchmarks/svgd_speed.py [--data ../shared/data] [--device cpu] [--repeats 20]
        [--particles 4 16 64] [--write docs/benchmarks/svgd_speed.md]
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyro
import torch
from _common import machine  # benchmarks/ is sys.path[0] when a script runs

from pyroprune.data import TensorSplit, load_mnist
from pyroprune.gates import GatedNet
from pyroprune.guides import TruncatedLogNormalGuide
from pyroprune.infer import elbo_loss
from pyroprune.infer.svgd import SVGD
from pyroprune.models import build_model
from pyroprune.plan import atomic_write_text

Batch = tuple[torch.Tensor, torch.Tensor]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_one(step: Callable[[Batch], object], batch: Batch, device: torch.device) -> float:
    """Wall time (ms) of ``step(batch)``, synchronised on CUDA."""
    _sync(device)
    t0 = time.perf_counter()
    step(batch)
    _sync(device)
    return 1e3 * (time.perf_counter() - t0)


@dataclass
class Row:
    """Timings of one row: the step's and the SVI baseline's, alternating (pair i = ``svi[i]``, ``step[i]``)."""

    kind: str  # "map" or "svgd"
    k: int
    svi: list[float] = field(default_factory=list)
    step: list[float] = field(default_factory=list)

    @property
    def ms(self) -> float:
        return statistics.median(self.step)

    @property
    def ratio(self) -> float:
        """Median over the alternating pairs of step / SVI step: robust to a load that drifts during the run."""
        return statistics.median(b / a for a, b in zip(self.svi, self.step, strict=True))


def time_row(row: Row, svi, step, batches: Iterator[Batch], warmup: int, repeats: int, device) -> Row:
    """Alternate one SVI step and one ``step`` ``repeats`` times on successive batches, after ``warmup`` of each."""
    for _ in range(warmup):
        svi(next(batches))
        step(next(batches))
    for _ in range(repeats):
        row.svi.append(time_one(svi, next(batches), device))
        row.step.append(time_one(step, next(batches), device))
    return row


def svi_step(gated: GatedNet, num_data: int, lr: float) -> Callable[[Batch], None]:
    """One SVI step per call: negative ELBO of the minibatch, backward, Adam on weights and guide."""
    guide = TruncatedLogNormalGuide(gated).to(next(gated.parameters()).device)
    loss_fn = elbo_loss(gated, guide, num_data)
    opt = torch.optim.Adam([*gated.parameters(), *guide.parameters()], lr=lr)

    def step(batch: Batch) -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(*batch).backward()
        opt.step()

    return step


def svgd_step(gated: GatedNet, k: int, num_data: int, lr: float) -> Callable[[Batch], object]:
    """One SVGD step of ``k`` particles per call (``check=False``, as :func:`~pyroprune.infer.fit_svgd`)."""
    engine = SVGD(gated, num_particles=k, lr=lr)
    return lambda batch: engine.step(*batch, check=False, num_data=num_data)


def map_step(gated: GatedNet, example: Batch, num_data: int, lr: float) -> Callable[[Batch], None]:
    """The step SVGD reduces to for one particle (MAP): log density, its gradient, Adam on the particle."""
    engine = SVGD(gated, num_particles=2, lr=lr)
    engine.setup(*example, num_data=num_data)
    particle = engine.particles.detach()[:1].clone().requires_grad_(True)
    opt = torch.optim.Adam([particle], lr=lr)

    def step(batch: Batch) -> None:
        log_p = engine.log_density(particle, *batch, num_data=num_data)
        (grad,) = torch.autograd.grad(log_p.sum(), particle)
        particle.grad = -grad
        opt.step()

    return step


def load_train(data: str, device: torch.device, batch_size: int) -> tuple[TensorSplit, str]:
    try:
        return load_mnist(data, device=device).train, f"MNIST training split from {data}"
    except FileNotFoundError:
        n = 20 * batch_size
        x, y = torch.randn(n, 1, 28, 28, device=device), torch.randint(0, 10, (n,), device=device)
        return TensorSplit(x, y), "random MNIST-shaped tensors (no MNIST files found)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--particles", type=int, nargs="+", default=[4, 16, 64], help="K of the SVGD rows (>= 2)")
    p.add_argument("--repeats", type=int, default=20, help="timed steps of SVI, MAP and K <= 4 (fewer for big K)")
    p.add_argument("--min-repeats", type=int, default=5, help="timed steps for the largest K at least")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave torch's default)")
    p.add_argument("--write", default=None, help="also write the result as Markdown to this file")
    args = p.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    pyro.set_rng_seed(0)
    load_before = os.getloadavg()[0]
    train, source = load_train(args.data, device, args.batch_size)
    n = len(train)
    batches = itertools.cycle(list(itertools.islice(train.batches(args.batch_size), 20)))
    example = next(batches)
    gated = GatedNet(build_model("lenet5-caffe").to(device), example[0][:2], num_data=n)

    def repeats_for(k: int) -> int:  # ~ the same total work per row: fewer timed steps for big K
        return max(args.min_repeats, args.repeats * 4 // max(k, 4))

    with pyro.validation_enabled(False):
        svi = svi_step(gated, n, args.lr)
        steps = [("map", 1, map_step(gated, example, n, args.lr))]
        steps += [("svgd", k, svgd_step(gated, k, n, args.lr)) for k in args.particles]
        rows = [
            time_row(Row(kind, k), svi, step, batches, args.warmup, repeats_for(k), device) for kind, k, step in steps
        ]
    svi_times = [t for row in rows for t in row.svi]
    svi_ms = statistics.median(svi_times)
    setting = (
        f"data: {source}; LeNet-5-Caffe with {len(gated.sites)} gate sites "
        f"(D = {sum(s.size for s in gated.sites)} gates); batch size {args.batch_size}; device {device}; "
        f"{machine(device)}; 1-minute load average {load_before:.2f} before and {os.getloadavg()[0]:.2f} after "
        "the run"
    )
    print(setting)
    print(f"SVI step {svi_ms:.1f} ms (median of {len(svi_times)})")
    print(f"{'K':>4} {'step':<6} {'ms/step':>10} {'x SVI':>8} {'x SVI / K':>10} {'pairs':>6}")
    for r in rows:
        print(f"{r.k:4d} {r.kind:<6} {r.ms:10.1f} {r.ratio:8.2f} {r.ratio / r.k:10.2f} {len(r.step):6d}")
    if args.write:
        atomic_write_text(Path(args.write), page(args, setting, svi_ms, len(svi_times), rows))


def page(args, setting: str, svi_ms: float, svi_count: int, rows: list[Row]) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = [
        "# SVGD speed: one SVGD step vs one SVI step",
        "",
        "Generated by `benchmarks/svgd_speed.py`; do not edit by hand.",
        "",
        f"Produced {now}. Command: `python benchmarks/svgd_speed.py {' '.join(sys.argv[1:])}`; {setting}.",
        "",
        "Baseline, measured in the same run: one SVI step of the same gated network "
        "(`TruncatedLogNormalGuide`, `elbo_loss`, `backward`, Adam on weights and guide), median of all "
        f"{svi_count} timed SVI steps: **{svi_ms:.1f} ms**. Every row alternates one SVI step and one step of its "
        "own (same minibatch stream); its ratio is the median over these pairs of step / SVI step, so a load "
        "that changes during the run (a shared machine) cancels. An SVGD step is "
        "`engine.step(x, y, check=False, num_data=N)`: one forward and backward pass over K × "
        f"{args.batch_size} images (the particles folded into the batch), the Stein direction (RBF, median "
        "bandwidth) and Adam on the particles; the network weights are fixed under SVGD. Pyro's validation is "
        f"off for every step (as in `fit_svi` after its first step). {args.warmup} warm-up steps per row, then "
        f"the median of the timed steps; K > 4 gets fewer timed pairs (at least {args.min_repeats}), "
        "the count is in the last column.",
        "",
        "| K | step | ms / step (median) | × one SVI step | × one SVI step, per particle | timed pairs |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        what = (
            "MAP step SVGD reduces to (it refuses K < 2): `log_density` of 1 particle, `autograd.grad`, Adam"
            if r.kind == "map"
            else "SVGD `engine.step`"
        )
        out.append(f"| {r.k} | {what} | {r.ms:.1f} | {r.ratio:.2f} | {r.ratio / r.k:.2f} | {len(r.step)} |")
    out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    main()
