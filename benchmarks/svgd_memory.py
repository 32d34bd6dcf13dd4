"""SVGD memory: peak working memory of one Stein direction, ours (:math:`O(KD + K^2)`) against the kernels of
``pyro.infer.SVGD`` (:math:`O(K^2 D)`), measured in the same process with
:func:`pyroprune.measure.peak_tensor_memory`.

What is measured, for ``K`` particles of dimension ``D`` (float32): the tensors allocated while the SVGD update
direction is computed from the particles and their log-density gradients (both ``[K, D]``, allocated before and
not counted) -- kernel matrix, repulsion, attraction, the result:

* ours -- :func:`pyroprune.infer.svgd.stein_direction` with :class:`~pyroprune.infer.svgd.RBFKernel` (median
  bandwidth);
* Pyro -- ``RBFSteinKernel().log_kernel_and_grad`` followed by the lines of ``pyro.infer.SVGD.step`` in mode
  ``"multivariate"`` (kernel matrix, ``torch.mm`` attraction, ``einsum`` repulsion).

The headline is the gates of ResNet-56 (:class:`~pyroprune.gates.GatedNet` on ``build_model("resnet56")``,
``D`` = number of gates) at ``K = 32``. A grid of ``(K, D)`` fits ``bytes ~ a K D + b K^2`` (ours) and
``bytes ~ c K^2 D + e K D`` (Pyro); with the memory available now (``MemAvailable`` of ``/proc/meminfo`` on CPU,
``torch.cuda.mem_get_info`` on CUDA) that predicts the largest ``K D`` whose Stein direction fits, inputs
included. One large configuration of ours is then run for real, at a safe fraction of the available memory, and
its measured peak printed beside the prediction (on CPU also the growth of the process's peak resident set,
which sees what the dispatch-level count cannot, e.g. BLAS workspaces).

Usage::

    python benchmarks/svgd_memory.py [--device cpu] [--verify-fraction 0.2] [--write docs/benchmarks/svgd_memory.md]
"""

from __future__ import annotations

import argparse
import datetime
import os
import resource
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from _common import machine  # benchmarks/ is sys.path[0] when a script runs
from pyro.infer import RBFSteinKernel

from pyroprune.gates import GatedNet
from pyroprune.infer.svgd import RBFKernel, stein_direction
from pyroprune.measure import peak_tensor_memory
from pyroprune.models import build_model
from pyroprune.plan import atomic_write_text

GRID_K = (8, 16, 32, 64)
GRID_D = (250, 1000, 4000)
MAX_VERIFY_FRACTION = 0.25  # the machine is shared: never more than this share of the available memory


def ours_direction(particles: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """The SVGD direction of :mod:`pyroprune.infer.svgd` (RBF kernel, median bandwidth)."""
    return stein_direction(particles, grad, RBFKernel())


def pyro_direction(particles: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``pyro.infer.SVGD.step``'s direction in mode ``"multivariate"`` (``grad`` of the loss, i.e. of
    :math:`-\\log p`; the sign does not change the memory)."""
    log_kernel, kernel_grad = RBFSteinKernel().log_kernel_and_grad(particles)
    kernel = log_kernel.sum(-1).exp()
    attractive_grad = torch.mm(kernel, grad)
    repulsive_grad = torch.einsum("nm,nm...->n...", kernel, kernel_grad)
    return (attractive_grad + repulsive_grad) / particles.shape[0]


def measure(fn, k: int, d: int, device: torch.device) -> int:
    """Peak bytes of ``fn(particles, grad)`` for random ``[K, D]`` float32 inputs (not counted)."""
    gen = torch.Generator(device=device).manual_seed(k * 100003 + d)
    particles = torch.randn(k, d, device=device, generator=gen)
    grad = torch.randn(k, d, device=device, generator=gen)
    _, peak = peak_tensor_memory(fn, particles, grad, device=device)
    return peak


def resnet56_gates() -> tuple[int, int]:
    """(number of gate sites, total number of gates D) of ResNet-56 as a GatedNet."""
    gated = GatedNet(build_model("resnet56"), torch.randn(2, 3, 32, 32))
    return len(gated.sites), sum(s.size for s in gated.sites)


def fit(rows: list[tuple[int, int, int]], terms) -> list[float]:
    """Least-squares coefficients of ``bytes ~ sum_i coef_i * term_i(K, D)`` over measured ``(K, D, bytes)``."""
    a = torch.tensor([[t(k, d) for t in terms] for k, d, _ in rows], dtype=torch.float64)
    b = torch.tensor([[float(v)] for _, _, v in rows], dtype=torch.float64)
    return torch.linalg.lstsq(a, b).solution.squeeze(1).tolist()


def available_bytes(device: torch.device) -> int:
    """Memory available to new allocations now: ``MemAvailable`` (CPU) or the free device memory (CUDA)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def _rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def verify(k: int, d: int, device: torch.device) -> dict:
    """Run ours at ``(K, D)`` for real: measured peak, and (CPU) the growth of the peak resident set."""
    rss0, max_rss0 = _rss_bytes(), _max_rss_bytes()
    particles = torch.randn(k, d, device=device)
    grad = torch.randn(k, d, device=device)
    _, peak = peak_tensor_memory(ours_direction, particles, grad, device=device)
    out = {"peak": peak, "rss_growth": None}
    max_rss1 = _max_rss_bytes()
    if device.type == "cpu" and max_rss1 > max_rss0:  # a new high-water mark: it was set by this run
        out["rss_growth"] = max_rss1 - rss0
    del particles, grad
    return out


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def mib(n: float) -> str:
    return f"{n / 2**20:.2f} MiB"


OURS_TERMS = (lambda k, d: k * d, lambda k, d: k * k)  # a K D + b K^2
PYRO_TERMS = (lambda k, d: k * k * d, lambda k, d: k * d)  # c K^2 D + e K D


@dataclass
class Results:
    """Everything the report prints (bytes unless said otherwise)."""

    device: torch.device
    elem: int
    num_sites: int
    d56: int
    k: int
    ours56: int
    pyro56: int
    rows_ours: list[tuple[int, int, int]] = field(default_factory=list)
    rows_pyro: list[tuple[int, int, int]] = field(default_factory=list)
    coef_ours: tuple[float, float] = (0.0, 0.0)
    coef_pyro: tuple[float, float] = (0.0, 0.0)
    avail: int = 0
    largest: list[tuple[int, float, float]] = field(default_factory=list)  # (K, largest K*D ours, Pyro)
    verified: dict = field(default_factory=dict)

    @property
    def input_bytes_per_kd(self) -> int:
        return 2 * self.elem  # particles and gradients, [K, D] each

    def residual(self, pyro: bool) -> float:
        rows, terms, coef = (
            (self.rows_pyro, PYRO_TERMS, self.coef_pyro) if pyro else (self.rows_ours, OURS_TERMS, self.coef_ours)
        )
        return max(abs(sum(c * t(k, d) for c, t in zip(coef, terms, strict=True)) - v) / v for k, d, v in rows)

    def largest_kd_ours(self, k: int) -> float:
        """inputs + a K D + b K^2 <= available."""
        a, b = self.coef_ours
        return max(self.avail - b * k * k, 0.0) / (self.input_bytes_per_kd + a)

    def largest_kd_pyro(self, k: int) -> float:
        """inputs + c K^2 D + e K D <= available."""
        c, e = self.coef_pyro
        return k * self.avail / (c * k * k + (self.input_bytes_per_kd + e) * k)


def run(args) -> Results:
    device = torch.device(args.device)
    elem = torch.empty((), dtype=torch.float32).element_size()
    num_sites, d56 = resnet56_gates()
    r = Results(device, elem, num_sites, d56, args.k, 0, 0)
    r.ours56, r.pyro56 = measure(ours_direction, args.k, d56, device), measure(pyro_direction, args.k, d56, device)
    for k in GRID_K:
        for d in sorted({*GRID_D, d56}):
            r.rows_ours.append((k, d, measure(ours_direction, k, d, device)))
            r.rows_pyro.append((k, d, measure(pyro_direction, k, d, device)))
    r.coef_ours = tuple(fit(r.rows_ours, OURS_TERMS))
    r.coef_pyro = tuple(fit(r.rows_pyro, PYRO_TERMS))
    r.avail = available_bytes(device)
    r.largest = [(k, r.largest_kd_ours(k), r.largest_kd_pyro(k)) for k in (32, 64)]
    vk = args.verify_k
    a, b = r.coef_ours
    vd = int(max(args.verify_fraction * r.avail - b * vk * vk, 0.0) / ((r.input_bytes_per_kd + a) * vk))
    r.verified = {
        "k": vk,
        "d": vd,
        "predicted": a * vk * vd + b * vk * vk,
        "inputs": r.input_bytes_per_kd * vk * vd,
        **verify(vk, vd, device),
    }
    return r


def summary(r: Results, args, setting: str) -> str:
    (a, b), (c, e), v = r.coef_ours, r.coef_pyro, r.verified
    lines = [
        setting,
        f"ResNet-56 gates: {r.num_sites} sites, D = {r.d56}; K = {r.k}, float32",
        f"  ours {mib(r.ours56)}   Pyro {mib(r.pyro56)}   Pyro / ours = {r.pyro56 / r.ours56:.1f}x",
        f"fit ours: bytes = {a:.2f} K D + {b:.2f} K^2 (max rel. residual {r.residual(False):.1%})",
        f"fit Pyro: bytes = {c:.2f} K^2 D + {e:.2f} K D (max rel. residual {r.residual(True):.1%})",
        f"available now: {gib(r.avail)}",
    ]
    for k, ko, kp in r.largest:
        lines.append(f"  K = {k}: largest K*D ours {ko:.3g} (D = {ko / k:.3g}), Pyro {kp:.3g} (D = {kp / k:.3g})")
    lines.append(
        f"verified: K = {v['k']}, D = {v['d']} ({args.verify_fraction:.0%} of the available memory): measured peak "
        f"{gib(v['peak'])}, predicted {gib(v['predicted'])} (+ {gib(v['inputs'])} inputs)"
        + (f"; peak RSS grew by {gib(v['rss_growth'])}" if v["rss_growth"] is not None else "")
    )
    lines.append("\n   K      D     ours (B)  ours/(K·D·4)   Pyro (B)  Pyro/(K²·D·4)  Pyro/ours")
    for (k, d, vo), (_, _, vp) in zip(r.rows_ours, r.rows_pyro, strict=True):
        lines.append(
            f"{k:4d} {d:6d} {vo:12d} {vo / (k * d * r.elem):12.2f} {vp:12d} {vp / (k * k * d * r.elem):12.2f} "
            f"{vp / vo:10.1f}"
        )
    return "\n".join(lines)


def page(r: Results, args, setting: str) -> str:
    (a, b), (c, e), v = r.coef_ours, r.coef_pyro, r.verified
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = [
        "# SVGD memory: one Stein direction, ours vs `pyro.infer.SVGD`",
        "",
        "Generated by `benchmarks/svgd_memory.py`; do not edit by hand.",
        "",
        f"Produced {now}. Command: `python benchmarks/svgd_memory.py {' '.join(sys.argv[1:])}`; {setting}.",
        "",
        "Measured: the peak bytes of tensor storage allocated while one SVGD update direction is computed from "
        "`[K, D]` float32 particles and log-density gradients (those two inputs exist before and are not "
        "counted), with `pyroprune.measure.peak_tensor_memory` (CPU: every operator's output storages, counted "
        "once while alive -- exact and deterministic; CUDA: the caching allocator's peak). Ours: "
        "`stein_direction(particles, grad, RBFKernel())`; Pyro: `RBFSteinKernel().log_kernel_and_grad` and the "
        "`multivariate` lines of `pyro.infer.SVGD.step`. Both use the median bandwidth.",
        "",
        f"## ResNet-56 gates, K = {r.k}",
        "",
        f'`GatedNet(build_model("resnet56"), ...)`: {r.num_sites} gate sites, D = {r.d56} gates.',
        "",
        "| | peak working memory |",
        "|---|---|",
        f"| ours (`[K, K]` and `[K, D]` tensors) | {mib(r.ours56)} |",
        f"| Pyro (`[K, K, D]` tensors) | {mib(r.pyro56)} |",
        "",
        f"**Pyro / ours: {r.pyro56 / r.ours56:.1f}×** (same run, same inputs).",
        "",
        "## Scaling",
        "",
        "| K | D | ours (bytes) | ours / (K·D·4 B) | Pyro (bytes) | Pyro / (K²·D·4 B) | Pyro / ours |",
        "|---|---|---|---|---|---|---|",
    ]
    for (k, d, vo), (_, _, vp) in zip(r.rows_ours, r.rows_pyro, strict=True):
        out.append(
            f"| {k} | {d} | {vo:,} | {vo / (k * d * r.elem):.2f} | {vp:,} | {vp / (k * k * d * r.elem):.2f} | "
            f"{vp / vo:.1f}× |"
        )
    out += [
        "",
        f"Least-squares fits over these points: ours ≈ {a:.2f}·K·D + {b:.2f}·K² bytes (max relative residual "
        f"{r.residual(False):.1%}), i.e. {a / r.elem:.1f} `[K, D]` and {b / r.elem:.1f} `[K, K]` float32 tensors "
        f"alive at the peak; Pyro ≈ {c:.2f}·K²·D + {e:.2f}·K·D bytes ({r.residual(True):.1%}), i.e. "
        f"{c / r.elem:.1f} `[K, K, D]` tensors. At fixed K both grow linearly in D, Pyro's K times faster "
        "(the last column grows like K).",
        "",
        "## Largest K·D that fits on this machine",
        "",
        f"Available when measured: {gib(r.avail)} "
        f"({'MemAvailable of /proc/meminfo' if r.device.type == 'cpu' else 'free device memory'}). Predicted from "
        "the fits, counting the two `[K, D]` inputs too (particles and gradients; the model's own forward and "
        "backward passes are not included):",
        "",
        "| K | largest K·D, ours | largest D, ours | largest K·D, Pyro | largest D, Pyro | ours / Pyro |",
        "|---|---|---|---|---|---|",
    ]
    for k, ko, kp in r.largest:
        out.append(f"| {k} | {ko:.3g} | {ko / k:.3g} | {kp:.3g} | {kp / k:.3g} | {ko / kp:.0f}× |")
    rss = (
        f" The process's peak resident set grew by {gib(v['rss_growth'])} during that run: inputs and working "
        "memory, plus whatever the operator-level count cannot see (BLAS workspaces, allocator overhead)."
        if v["rss_growth"] is not None
        else ""
    )
    out += [
        "",
        f"Verified by running ours for real at K = {v['k']}, D = {v['d']:,} (K·D = {v['k'] * v['d']:.3g}), sized "
        f"to {args.verify_fraction:.0%} of the available memory (the machine is shared): measured peak "
        f"**{gib(v['peak'])}**, predicted {gib(v['predicted'])} (measured / predicted = "
        f"{v['peak'] / v['predicted']:.3f}), plus {gib(v['inputs'])} of inputs.{rss} Pyro's kernels would need "
        f"{gib(c * v['k'] ** 2 * v['d'] + e * v['k'] * v['d'])} there.",
        "",
    ]
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--k", type=int, default=32, help="particles for the ResNet-56 headline")
    p.add_argument("--verify-k", type=int, default=32, help="particles of the large configuration run for real")
    p.add_argument(
        "--verify-fraction",
        type=float,
        default=0.2,
        help=f"share of the available memory the large run may use (at most {MAX_VERIFY_FRACTION})",
    )
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave torch's default)")
    p.add_argument("--write", default=None, help="also write the result as Markdown to this file")
    args = p.parse_args()
    if not 0 < args.verify_fraction <= MAX_VERIFY_FRACTION:
        p.error(f"--verify-fraction must be in (0, {MAX_VERIFY_FRACTION}]")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = run(args)
    setting = f"device {results.device}; {machine(results.device)}"
    print(summary(results, args, setting))
    if args.write:
        atomic_write_text(Path(args.write), page(results, args, setting))


if __name__ == "__main__":
    main()
