"""Cost of the gate distributions on the SVI hot path, in milliseconds per call.

Every SVI step with ``TraceMeanField_ELBO`` evaluates, per gate site (a ``TruncatedLogNormal`` of batch shape
``[C]``): ``rsample()`` (forward and backward), the guide's ``log_prob`` at its own sample (Pyro's
``compute_score_parts`` always computes it) and ``kl_divergence(TruncatedLogNormal, LogUniform)`` (forward and
backward), and the model evaluates the prior's ``log_prob``. Each line below builds a fresh distribution per
call, as the guide does (the construction is timed on its own too); ``site step`` is one guide site of one SVI
step: construct, rsample, log_prob and KL, one backward through the sample and the KL.

Usage::

    python benchmarks/distribution_speed.py [--sizes 50 5000] [--dtypes float32 float64] [--threads 1]
        [--device cpu] [--regimes sbp bulk spike_b spike_a uniform mixed]

Timing: the best of ``--repeats`` rounds of the mean over ``--calls`` calls (the machine is shared; the best
round is the least disturbed one).
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import torch
from torch.distributions import kl_divergence

from pyroprune.distributions import LogUniform, TruncatedLogNormal

A, B = -20.0, 0.0

#: (loc, log_scale) of every gate, or a callable drawing them
REGIMES = {
    "sbp": (0.0, -5.0),  # SBP's initialisation: mu = 0, sigma = e^-5, a half-normal spike against b
    "bulk": (-3.0, 0.0),  # inside [a, b], sigma = 1
    "spike_b": (5.0, math.log(1e-4)),  # an exponential spike of width 2e-9 against b
    "spike_a": (-25.0, math.log(1e-4)),  # the same against a
    "uniform": (-10.0, math.log(150.0)),  # nearly uniform on [a, b]
    "mixed": None,  # mu ~ U(-25, 5), log sigma ~ U(log 1e-4, log 150), a different regime per gate
}


def _params(regime: str, size: int, dtype: torch.dtype, device: torch.device):
    spec = REGIMES[regime]
    if spec is None:
        g = torch.Generator().manual_seed(0)
        loc = -25.0 + 30.0 * torch.rand(size, generator=g, dtype=torch.float64)
        log_scale = math.log(1e-4) + (math.log(150.0) - math.log(1e-4)) * torch.rand(
            size, generator=g, dtype=torch.float64
        )
    else:
        loc = torch.full((size,), spec[0], dtype=torch.float64)
        log_scale = torch.full((size,), spec[1], dtype=torch.float64)
    loc = loc.to(dtype=dtype, device=device).requires_grad_()
    log_scale = log_scale.to(dtype=dtype, device=device).requires_grad_()
    return loc, log_scale


def _timer(device: torch.device, calls: int, repeats: int):
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def run(fn) -> float:
        for _ in range(max(3, calls // 10)):
            fn()
        best = math.inf
        for _ in range(repeats):
            sync()
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            sync()
            best = min(best, (time.perf_counter() - t0) / calls)
        return best * 1e3

    return run


def bench(regime: str, size: int, dtype: torch.dtype, device: torch.device, calls: int, repeats: int) -> dict:
    loc, log_scale = _params(regime, size, dtype, device)
    prior = LogUniform(torch.tensor(A, dtype=dtype, device=device), torch.tensor(B, dtype=dtype, device=device))
    p = prior.expand([size])

    def q():
        return TruncatedLogNormal(loc, log_scale.exp(), A, B)

    z = q().rsample().detach()

    def site_step():
        d = q()
        theta = d.rsample()
        d.log_prob(theta)  # computed by Pyro, not part of the loss when the KL is analytic
        (theta.sum() + kl_divergence(d, p).sum()).backward()

    run = _timer(device, calls, repeats)
    return {
        "construct": run(q),
        "rsample fwd": run(lambda: q().rsample()),
        "rsample fwd+bwd": run(lambda: q().rsample().sum().backward()),
        "log_prob fwd+bwd": run(lambda: q().log_prob(z).sum().backward()),
        "kl fwd+bwd": run(lambda: kl_divergence(q(), p).sum().backward()),
        "prior log_prob": run(lambda: p.log_prob(z)),
        "site step": run(site_step),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 5000])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    parser.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=list(REGIMES))
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--write", default=None, help="also write the table as Markdown to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    lines = [f"torch {torch.__version__}, device {device}, {args.threads} thread(s); milliseconds per call"]
    print(lines[0])
    header = None
    for size in args.sizes:
        for dtype_name in args.dtypes:
            dtype = getattr(torch, dtype_name)
            for regime in args.regimes:
                row = bench(regime, size, dtype, device, args.calls, args.repeats)
                if header is None:
                    header = list(row)
                    lines.append(f"{'C':>5} {'dtype':>8} {'regime':>8} " + " ".join(f"{h:>16}" for h in header))
                    print(lines[-1])
                lines.append(f"{size:>5} {dtype_name:>8} {regime:>8} " + " ".join(f"{row[h]:>16.3f}" for h in header))
                print(lines[-1], flush=True)
    if args.write:
        from pyroprune.plan import atomic_write_text

        cmd = " ".join(sys.argv[1:] if argv is None else argv)
        text = (
            "# Cost of the gate distributions on the SVI hot path\n\n"
            "Generated by `benchmarks/distribution_speed.py`; do not edit by hand.\n\n"
            f"Command: `python benchmarks/distribution_speed.py {cmd}`\n\n```\n" + "\n".join(lines) + "\n```\n"
        )
        atomic_write_text(args.write, text)


if __name__ == "__main__":
    main()
