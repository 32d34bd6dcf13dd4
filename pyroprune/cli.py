"""The ``pyroprune`` command.

``pyroprune demo`` prunes the BMRS MLP on scikit-learn's bundled digits (no download) and writes
``metrics.json``, ``plan.json``, ``run.json`` and the pruned model (``model/``) into ``--out``.

Every user error ends in one line ``pyroprune: error: ...`` on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import fields
from pathlib import Path

import torch

from .demo import DEMO_METHODS, DEMO_SPLIT_SEED

__all__ = ["main"]


class UserError(Exception):
    """An error the user can fix; printed as one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage dump
        self.exit(2, f"pyroprune: error: {message} (see '{self.prog} --help')\n")


def _build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog="pyroprune", description="Bayesian structured pruning of neural networks in Pyro.")
    parser.add_argument("--version", action="version", version=f"pyroprune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    demo = sub.add_parser(
        "demo",
        help="prune an MLP on scikit-learn's digits (no download) and report dense vs pruned",
        description="Train the BMRS MLP (6 tanh layers x 50 units) on scikit-learn's bundled digits, fit the "
        "gate posterior by SVI, decide with the chosen rule, remove the pruned neurons, fine-tune, and "
        "report accuracy, kept structures, parameters, MACs and measured latency.",
    )
    demo.add_argument("--out", default="demo-run", help="run directory (default: %(default)s)")
    demo.add_argument("--force", action="store_true", help="replace the files of an existing run directory")
    demo.add_argument(
        "--method", default="bmrs-u8", help=f"decision rule: {', '.join(DEMO_METHODS)} (default: %(default)s)"
    )
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    demo.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: %(default)s)")
    demo.add_argument("--epochs", type=int, default=60, help="SVI epochs (default: %(default)s)")
    demo.add_argument("--pretrain-epochs", type=int, default=40, help="dense training epochs (default: %(default)s)")
    demo.add_argument("--finetune-epochs", type=int, default=10, help="fine-tuning epochs (default: %(default)s)")
    demo.add_argument("--schedule", default="continuous", help="continuous or post-training (default: %(default)s)")
    demo.add_argument("--prior-low", type=float, default=-20.0, help="log-uniform prior lower bound a of log θ")
    demo.add_argument("--prior-high", type=float, default=0.0, help="log-uniform prior upper bound b of log θ")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    prune = sub.add_parser(
        "prune",
        help="run a recipe (recipes/*.toml): pretrain, fit the gates, decide, remove, fine-tune, measure",
        description="Run the experiment a recipe describes and write a run directory (metrics.json, plan.json, "
        "run.json, model/, dense/, posterior/, checkpoint/). Resumable: the SVI stage writes a checkpoint after "
        "every epoch; --resume continues an interrupted run.",
    )
    prune.add_argument("recipe", metavar="RECIPE", help="a recipe file (TOML) or the name of a built-in recipe")
    prune.add_argument("--out", default=None, help="run directory (default: runs/<recipe name>)")
    prune.add_argument(
        "--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="override a recipe key"
    )
    prune.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: %(default)s)")
    prune.add_argument("--data-root", default=None, help="folder holding the data set (overrides data.root)")
    prune.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    prune.add_argument("--force", action="store_true", help="replace the files of an existing run directory")
    prune.add_argument("--quiet", action="store_true", help="no progress bars")
    compare = sub.add_parser("compare", help="print one table over run directories (metrics.json)")
    compare.add_argument("dirs", nargs="+", metavar="DIR", help="run directories")
    report = sub.add_parser(
        "report",
        help="write the reliability report (report.md, figures, ArviZ data) of one or more run directories",
        description="Rebuild fitted runs from their directories (written by 'pyroprune demo') and write the "
        "reliability report: calibration, uncertainty, dense vs pruned, conformal coverage, PSIS k-hat, uncertain "
        "decisions; with several runs of one method (seeds), also their stability.",
    )
    report.add_argument("dirs", nargs="+", metavar="DIR", help="run directories (several = seeds of one method)")
    report.add_argument("--out", default=None, help="report directory (default: DIR/report of the first DIR)")
    report.add_argument("--force", action="store_true", help="replace the files of an existing report")
    report.add_argument("--draws", type=int, default=100, help="posterior draws per run (default: %(default)s)")
    report.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: %(default)s)")
    report.add_argument("--data-root", default=None, help="folder holding the data set (overrides the run's root)")
    return parser


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise UserError(f"--device {name!r} is not a device name (use cpu, cuda or cuda:N)") from e
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(
                f"--device {name}: CUDA is not available on this machine (torch.cuda.is_available() is False)"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise UserError(f"--device {name}: only cpu and cuda are supported")
    return device


def _prepare_out(path: str, force: bool) -> Path:
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UserError(f"--out {out}: directory exists and is not empty; use --force to replace its results")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".pyroprune-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UserError(f"--out {out}: cannot write there ({e.strerror or e})") from e
    return out


def _pct(fraction: float | None) -> str:
    return "n/a (not trained)" if fraction is None else f"{100 * fraction:.2f} %"


def _table(dense: dict, pruned: dict) -> str:
    rows = [
        ("accuracy (test)", _pct(dense["accuracy"]), _pct(pruned["accuracy"]), ""),
        ("kept structures", dense["kept"], pruned["kept"], ""),
        (
            "parameters",
            f"{dense['params']:,}",
            f"{pruned['params']:,}",
            f"{dense['params'] / pruned['params']:.2f}x fewer",
        ),
        (
            "MACs / example",
            f"{dense['macs']:,}",
            f"{pruned['macs']:,}",
            f"{dense['macs'] / pruned['macs']:.2f}x fewer",
        ),
        (
            "latency (ms, median)",
            f"{dense['latency_ms']:.3f}",
            f"{pruned['latency_ms']:.3f}",
            f"{dense['latency_ms'] / pruned['latency_ms']:.2f}x faster",
        ),
    ]
    header = ("", "dense", "pruned", "")
    widths = [max(len(str(r[i])) for r in [*rows, header]) for i in range(4)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def run_demo(args: argparse.Namespace) -> int:
    import pyro

    from .data import load_digits
    from .demo import DEMO_ARCH, train_dense
    from .diagnostics.report import diagnose, write_report
    from .pipeline import PruneConfig, prune_and_measure
    from .plan import atomic_write_text
    from .runs import artifacts_from_result, save_run

    if args.method not in DEMO_METHODS:
        raise UserError(f"--method {args.method!r} is not one of {', '.join(DEMO_METHODS)}")
    config = PruneConfig(
        method=args.method,
        schedule=args.schedule,
        epochs=args.epochs,
        finetune_epochs=args.finetune_epochs,
        prior_low=args.prior_low,
        prior_high=args.prior_high,
        seed=args.seed,
    )
    try:
        config.validate()
    except ValueError as e:
        # name the command-line option, not the PruneConfig field
        names = {f.name for f in fields(PruneConfig)}
        message = re.sub(r"'(\w+)'", lambda m: "--" + m[1].replace("_", "-") if m[1] in names else m[0], str(e))
        raise UserError(message) from e
    if args.pretrain_epochs < 0:
        raise UserError("--pretrain-epochs must be >= 0")
    device = _device(args.device)
    out = _prepare_out(args.out, args.force)
    progress = not args.quiet

    pyro.set_rng_seed(args.seed)
    # The split is fixed (seed 0) whatever --seed is, so that runs with different seeds share one test set and
    # can be reported together (pyroprune report DIR1 DIR2 ...); --seed seeds training.
    data = load_digits(seed=DEMO_SPLIT_SEED, device=device)
    dense = train_dense(data, epochs=args.pretrain_epochs, seed=args.seed, progress=progress)
    result, metrics = prune_and_measure(dense, data, config, model=DEMO_ARCH["name"], progress=progress)
    metrics["device"] = str(device)
    dense_m, pruned_m = metrics["dense"], metrics["pruned"]
    diagnostics = diagnose([artifacts_from_result(result, dense)], data, seed=args.seed)
    metrics["khat"] = diagnostics.summary["khat"].get("khat")
    save_run(
        out,
        result,
        dense,
        arch=DEMO_ARCH,
        data={"name": "digits", "seed": DEMO_SPLIT_SEED},
        metadata={"command": "pyroprune demo", "device": str(device)},
    )
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=1))
    write_report(diagnostics, data, out / "report", force=args.force)

    print()
    print(
        f"pyroprune demo: BMRS MLP on scikit-learn digits, method {args.method}, schedule {args.schedule}, "
        f"seed {args.seed}, {device}"
    )
    print(_table(dense_m, pruned_m))
    k = metrics["khat"]
    print(f"PSIS k-hat of the gate posterior: {'n/a' if k is None else f'{k:.2f}'}")
    print(
        f"\nwrote {out}/metrics.json, plan.json, run.json, model/ (pyroprune.load_pruned('{out}/model')), "
        f"dense/, posterior/, report/report.md"
    )
    return 0


def run_prune(args: argparse.Namespace) -> int:
    from .experiment import run_recipe
    from .recipes import load_recipe

    recipe = load_recipe(args.recipe, args.sets)
    device = _device(args.device)
    out = Path(args.out) if args.out else Path("runs") / recipe.name
    if args.resume:
        if not (out / "checkpoint").is_dir():
            raise UserError(f"--resume: no checkpoint in {out}/checkpoint (run without --resume first)")
    else:
        out = _prepare_out(str(out), args.force)
    run = run_recipe(
        recipe,
        out,
        device=device,
        data_root=args.data_root,
        resume=args.resume,
        progress=not args.quiet,
        metadata={"command": "pyroprune prune"},
    )
    arch, spec = recipe.model["name"], recipe.data["name"]
    print(f"\npyroprune prune {recipe.name}: {recipe.prune.method} on {arch} / {spec}, {device}")
    print(_table(run.metrics["dense"], run.metrics["pruned"]))
    depth = run.metrics.get("depth")
    if depth is not None:  # SR-init: the kept structures above are channels after a depth stage, blocks without
        removed = ", ".join(depth["removed_blocks"]) or "none"
        print(f"SR-init: removable blocks kept per stage {depth['blocks_kept']} of {depth['blocks_total']}")
        print(f"SR-init: removed {removed} (pyroprune report {out} shows every block's drop)")
    print(f"\nwrote {out}")
    return 0


def run_compare(args: argparse.Namespace) -> int:
    rows = []
    for d in args.dirs:
        path = Path(d) / "metrics.json"
        if not path.is_file():
            raise UserError(f"{path} not found (not a run directory?)")
        try:
            m = json.loads(path.read_text())
            rows.append(
                (
                    str(d),
                    m.get("model", "?"),
                    m.get("dataset", "?"),
                    m["method"],
                    f"{100 * (1 - m['pruned']['accuracy']):.2f}",
                    m["pruned"]["kept"],
                    f"{m['params_reduction']:.2f}x",
                    f"{m['macs_reduction']:.2f}x",
                    f"{m['latency_speedup']:.2f}x",
                )
            )
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise UserError(f"{path} is not a pyroprune metrics file ({e})") from e
    header = ("run", "model", "data", "method", "error %", "kept", "params", "MACs", "latency")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))
    return 0


def run_report(args: argparse.Namespace) -> int:
    from .diagnostics.report import write_report
    from .runs import load_run, run_data_spec

    device = _device(args.device)
    specs = {str(d): run_data_spec(d) for d in args.dirs}
    if len({json.dumps(v, sort_keys=True) for v in specs.values()}) > 1:
        raise UserError(f"the runs were fitted on different data splits ({specs}); report them separately")
    loaded = [load_run(d, device=device, data_root=args.data_root) for d in args.dirs]
    runs = [r for r, _ in loaded]
    data = loaded[0][1]
    out = Path(args.out) if args.out else Path(args.dirs[0]) / "report"
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    written = write_report(runs, data, out, force=args.force, num_draws=args.draws)
    print(f"wrote {out / 'report.md'} and {len(written) - 1} more files")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    from .infer import TrainingDiverged

    try:
        commands = {"demo": run_demo, "prune": run_prune, "compare": run_compare, "report": run_report}
        return commands[args.command](args)
    except (UserError, ValueError, TypeError, FileNotFoundError, FileExistsError, TrainingDiverged) as e:
        print(f"pyroprune: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pyroprune: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
