"""SR-init scoring speed: every removable block re-initialised with R seeds and evaluated on validation images.

Four ways to compute the same R x blocks accuracies, in one process, on the same network, images and device:

* baseline -- *copy and re-initialise*: for each block and seed, ``copy.deepcopy`` the network, re-initialise the
  block in place, evaluate it on every image (the straightforward reimplementation of SR-init's public code);
* *reload* -- as the baseline, but the trained weights are loaded from a checkpoint on disk before each
  evaluation (``torch.load``), as scripts that restart from the saved model do;
* ours, one seed at a time -- :func:`~pyroprune.sensitivity.block_sensitivity` with ``vectorize=False``: the
  fresh block parameters are passed with ``torch.func.functional_call``, nothing is copied;
* ours, vectorised -- ``block_sensitivity`` (the default): the R seeds of a block in one ``torch.func.vmap``
  call; the layers before the block are computed once for all seeds.

The vectorised and looped results are checked equal to the baseline's accuracies. Each row is the median over
``--repeats`` rounds; the four ways alternate within a round, so a load that drifts during the run affects them
alike. Networks: the small residual network of the ``srinit-resnet20-mnist`` recipe on MNIST validation images,
and ResNet-56 with one input channel on the same images (25 removable blocks).

Usage::

    python benchmarks/srinit_scoring.py [--data ../shared/data] [--device cpu] [--images 1000] [--deep-images 100]
        [--seeds 5] [--repeats 3] [--write docs/benchmarks/srinit_scoring.md]
"""

from __future__ import annotations

import argparse
import copy
import datetime
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import machine  # benchmarks/ is sys.path[0] when a script runs

from pyroprune.blocks import find_residual_blocks, kaiming_init
from pyroprune.data import TensorSplit, load_mnist
from pyroprune.models import build_model
from pyroprune.plan import atomic_write_text
from pyroprune.sensitivity import _seed_for, block_sensitivity


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def _accuracy(net, split: TensorSplit, batch: int) -> float:
    return float(torch.cat([net(x).argmax(-1) == y for x, y in split.batches(batch)]).float().mean())


@torch.no_grad()
def copy_and_reinit(net, split, paths, seeds, batch, checkpoint: Path | None = None) -> list[list[float]]:
    """The baseline (and, with ``checkpoint``, the reload variant): one deep copy per (block, seed)."""
    out = []
    for path in paths:
        row = []
        for r in range(seeds):
            fresh = copy.deepcopy(net)
            if checkpoint is not None:
                fresh.load_state_dict(torch.load(checkpoint, map_location=split.x.device, weights_only=True))
            g = torch.Generator(device=split.x.device).manual_seed(_seed_for(0, path, r))
            kaiming_init(fresh.get_submodule(path), g)
            row.append(_accuracy(fresh.eval(), split, batch))
        out.append(row)
    return out


def run(name: str, net, split: TensorSplit, seeds: int, repeats: int, batch: int, device) -> dict:
    paths = [b.path for b in find_residual_blocks(net, split.x[:1]) if b.removable]
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "net.pt"
        torch.save(net.state_dict(), ckpt)
        ways = {
            "copy and re-initialise (baseline)": lambda: copy_and_reinit(net, split, paths, seeds, batch),
            "reload from disk": lambda: copy_and_reinit(net, split, paths, seeds, batch, ckpt),
            "ours, one seed at a time": lambda: block_sensitivity(
                net, split, num_seeds=seeds, batch_size=batch, num_draws=100, vectorize=False
            ),
            "ours, seeds vectorised": lambda: block_sensitivity(
                net, split, num_seeds=seeds, batch_size=batch, num_draws=100
            ),
        }
        times: dict[str, list[float]] = {k: [] for k in ways}
        results = {}
        for _ in range(repeats):
            for key, fn in ways.items():
                _sync(device)
                t = time.perf_counter()
                results[key] = fn()
                _sync(device)
                times[key].append(time.perf_counter() - t)
    base = torch.tensor(results["copy and re-initialise (baseline)"], dtype=torch.float64)
    acc0 = _accuracy(net.eval(), split, batch)
    for key in ("ours, one seed at a time", "ours, seeds vectorised"):
        ours = acc0 - results[key].drops / 100.0
        if not torch.allclose(ours, base, atol=1.5 / len(split)):
            raise SystemExit(f"{name}: {key} disagrees with the baseline's accuracies")
    median = {k: statistics.median(v) for k, v in times.items()}
    ref = median["copy and re-initialise (baseline)"]
    rows = [(k, median[k], ref / median[k]) for k in ways]
    return {"name": name, "blocks": len(paths), "images": len(split), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=1000, help="validation images scored (default: %(default)s)")
    parser.add_argument(
        "--deep-images", type=int, default=100, help="images for ResNet-56, 57x the MACs (default: %(default)s)"
    )
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--write", default=None, help="write a markdown page here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    data = load_mnist(args.data, val_size=5000, seed=0, device=device)
    nets = {
        "small residual network (srinit-resnet20-mnist)": (build_model("small-resnet"), args.images),
        "ResNet-56, one input channel": (build_model("resnet56", num_classes=10, in_channels=1), args.deep_images),
    }
    started = time.time()
    tables = []
    for name, (net, images) in nets.items():
        split = TensorSplit(data.val.x[:images], data.val.y[:images])
        net = net.to(device).eval()
        block_sensitivity(net, TensorSplit(split.x[:8], split.y[:8]), num_seeds=2, num_draws=10)  # warm-up
        tables.append(run(name, net, split, args.seeds, args.repeats, args.batch, device))
        print(f"{name}: {tables[-1]['blocks']} blocks x {args.seeds} seeds", file=sys.stderr)
        for key, seconds, speedup in tables[-1]["rows"]:
            print(f"  {key:40s} {seconds:8.2f} s  {speedup:6.2f}x", file=sys.stderr)
    lines = [
        "# SR-init scoring speed",
        "",
        f"Written by `python benchmarks/srinit_scoring.py {' '.join(sys.argv[1:])}` on "
        f"{datetime.date.today().isoformat()} ({time.time() - started:.0f} s).",
        "",
        f"Machine: {machine(device)}; device {device}.",
        "",
        f"Every removable block re-initialised with {args.seeds} seeds (Kaiming) and evaluated on the first "
        f"{args.images} MNIST validation images ({args.deep_images} for ResNet-56) in batches of {args.batch}; "
        f"wall time of the whole scoring, median of {args.repeats} "
        "rounds in which the four ways alternate. Speed-up is against copying the network and re-initialising the "
        "block in place for every evaluation. Ours includes the bootstrap (100 draws). The accuracies of both of "
        "ours are checked equal to the baseline's.",
        "",
    ]
    for t in tables:
        lines += [f"## {t['name']}: {t['blocks']} removable blocks, {t['images']} images", ""]
        lines += ["| way | seconds | speed-up |", "|---|---|---|"]
        lines += [f"| {k} | {s:.2f} | {x:.2f}× |" for k, s, x in t["rows"]]
        lines.append("")
    text = "\n".join(lines)
    print(text)
    if args.write:
        atomic_write_text(args.write, text)


if __name__ == "__main__":
    main()
