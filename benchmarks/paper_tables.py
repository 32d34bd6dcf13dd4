"""The MNIST tables: pyroprune's rows beside the published ones, written to docs/results.md and docs/results.json.

For each experiment (a built-in recipe) and seed, the dense network is pretrained and the gate posterior fitted
ONCE (post-training schedule, :func:`pyroprune.experiment.run_recipe` -- the computation ``pyroprune prune``
does), then every rule decides from that same posterior, the pruned network is removed physically and fine-tuned
(:func:`pyroprune.pipeline.decide_again`). Recipes whose schedule ties the fit to the rule (RBP's recursive
schedule) are run once with their own rule; DLLP's SVGD fit (network weights fixed) serves its two selections.
Every row is a run directory under ``--out`` (the pruned model and
its metrics); with ``--reuse`` finished rows are read back instead of recomputed, and an interrupted fit resumes
from its checkpoint.

Latency is measured at the end, for all rows in one loop, dense and pruned alternately in the same process
(median of ``--repeats`` forward passes of ``--latency-batch`` test images) on the CPU, and on CUDA when a GPU is
present, so the speed-ups are comparable with each other.

Usage::

    python benchmarks/paper_tables.py --data ../shared/data [--seeds 0 1] [--pretrain-epochs 10] [--svi-epochs 20]
        [--finetune-epochs 3] [--rbp-epochs 5] [--dllp-epochs 1] [--only sbp-lenet5-caffe-mnist ...] [--reuse]
        [--set prune.guide_lr=0.1 ...]
        [--write docs/results.md --json docs/results.json]

The epochs are far fewer than the papers' (200 + 200 for SBP): the table says what was run, on what hardware and
when.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from pyroprune.experiment import run_recipe
from pyroprune.measure import measure_latency
from pyroprune.pipeline import decide_again, measure_result
from pyroprune.plan import atomic_write_text
from pyroprune.recipes import builtin_recipes, load_recipe, recipe_from_dict, recipe_to_dict
from pyroprune.serialization import load_pruned, save_pruned

ROOT = Path(__file__).resolve().parents[1]

#: Rules applied to one shared post-training posterior: (label, rule, parameters). ``"match"`` is resolved to the
#: plan of the row named by its value.
RULES = [
    ("BMRS_N", "bmrs-n", {}),
    ("BMRS_N (public-code ΔF)", "bmrs-n", {"include_log_2pi": False}),
    ("BMRS_U-8", "bmrs-u8", {}),
    ("BMRS_U-4", "bmrs-u4", {}),
    ("SNR < 1 (SBP)", "snr", {"threshold": 1.0}),
    ("magnitude E[θ], matched to BMRS_U-8", "magnitude", {"match": "BMRS_U-8"}),
]

#: RBP's rules, each with its own recursive fit (the schedule ties the fit to the rule).
RBP_RULES = [("RBP (BMR against the Dirac-like spike)", "rbp-bmr"), ("RBP (tiny-noise threshold)", "rbp")]

#: DLLP's selections from one SVGD fit: (label, rule, parameters over the recipe's).
DLLP_RULES = [
    ("DLLP (inclusion probability ≥ 1/2)", "dllp", {"select": "inclusion"}),
    ("DLLP (best particle on validation)", "dllp", {"select": "best"}),
]

#: The experiments: built-in recipe -> published rows quoted beside ours (DESIGN.md; the papers' tables).
EXPERIMENTS: dict[str, list[dict]] = {
    "sbp-lenet-500-300-mnist": [
        {
            "method": "SBP",
            "source": "Neklyudov et al. 2017 (SBP), Table 1",
            "error_pct": 1.55,
            "kept": "245-160-55",
            "flops_reduction": 11.23,
            "cpu_speedup": 2.33,
        }
    ],
    "sbp-lenet5-caffe-mnist": [
        {
            "method": "SBP",
            "source": "Neklyudov et al. 2017 (SBP), Table 1",
            "error_pct": 0.86,
            "kept": "3-18-284-283",
            "flops_reduction": 10.49,
            "cpu_speedup": 5.41,
        },
        {
            "method": "Bayesian Compression (group horseshoe)",
            "source": "Louizos et al. 2017 (BC), Table 1",
            "error_pct": 1.0,
            "kept": "5-10-76-16",
        },
    ],
    "lenet-300-100-mnist": [
        {
            "method": "VIBNet",
            "source": "Dai et al. 2018 (VIBNet), Table 1",
            "error_pct": 1.6,
            "kept": "97-71-33",
        }
    ],
    # RBP's own schedule (one fit per rule); rows appear when the recipes exist
    "rbp-lenet-300-100-mnist": [],
    "rbp-lenet5-caffe-mnist": [],
    # DLLP (one SVGD fit, two selections); the abstract reports no MNIST figures
    "dllp-lenet5-caffe-mnist": [],
}

MODEL_NAMES = {
    "lenet-500-300": "LeNet-500-300",
    "lenet5-caffe": "LeNet-5-Caffe",
    "lenet-300-100": "LeNet-300-100",
    "bmrs-mlp": "BMRS MLP",
    "bmrs-lenet5": "BMRS LeNet-5",
}

#: Keys every row of results.json has (None where a paper does not report the figure).
ROW_KEYS = (
    "model",
    "dataset",
    "method",
    "error_pct",
    "kept",
    "params_reduction",
    "flops_reduction",
    "cpu_speedup",
    "source",
)


def _recipe(name: str, args: argparse.Namespace, seed: int, rule: tuple[str, str, dict], shared_fit: bool):
    recipe = load_recipe(name, args.sets)
    d = recipe_to_dict(recipe)
    d["pretrain"]["epochs"] = args.pretrain_epochs
    own_epochs = args.dllp_epochs if recipe.prune.schedule == "svgd" else args.rbp_epochs
    d["prune"].update(
        epochs=args.svi_epochs if shared_fit else own_epochs, finetune_epochs=args.finetune_epochs, seed=seed
    )
    if recipe.prune.schedule == "svgd" and args.dllp_particles is not None:
        d["prune"]["num_particles"] = args.dllp_particles
    _, method, params = rule
    d["prune"].update(method=method, method_params=dict(params))
    if shared_fit:
        # one posterior for every rule: the post-training schedule (the fit does not depend on the rule)
        d["prune"]["schedule"] = "post-training"
        if args.guide_lr is not None:
            d["prune"]["guide_lr"] = args.guide_lr
    return recipe_from_dict(d, source=recipe.source)


def _fits(recipe) -> list[tuple[str, list[tuple[str, str, dict]], bool]]:
    """(fit directory, rules decided from that fit, shared?) for a recipe."""
    if recipe.prune.schedule == "svgd":  # DLLP: one particle fit (rule-free), both of its selections
        own = dict(recipe.prune.method_params)
        return [("fit-dllp", [(label, m, {**own, **p}) for label, m, p in DLLP_RULES], False)]
    if recipe.prune.schedule != "recursive":
        return [("fit", RULES, True)]
    own = recipe.prune.method
    rules = [(label, m, dict(recipe.prune.method_params) if m == own else {}) for label, m in RBP_RULES]
    return [(f"fit-{_slug(label)}", [(label, m, p)], False) for label, m, p in rules]


def _arch(recipe) -> dict:
    return {"name": recipe.model["name"], "kwargs": dict(recipe.model.get("kwargs", {}))}


def _write_row(directory: Path, result, metrics: dict, label: str, arch: dict) -> None:
    save_pruned(result.pruned, directory / "model", arch=arch)
    result.plan.save(directory / "plan.json")
    atomic_write_text(directory / "metrics.json", json.dumps({**metrics, "label": label}, indent=1))


def run_experiment(name: str, seed: int, args: argparse.Namespace) -> list[dict]:
    """All rows of one experiment and seed (each also in ``args.out / name / seed<k> / <rule>``)."""
    base = Path(args.out) / name / f"seed{seed}"
    fits = [
        (fit_name, rules, _recipe(name, args, seed, rules[0], shared))
        for fit_name, rules, shared in _fits(load_recipe(name, args.sets))
    ]
    dirs = {label: base / _slug(label) for _, rules, _ in fits for label, _, _ in rules}
    if args.reuse:
        reused = [_finished_row(dirs[label], recipe) for _, rules, recipe in fits for label, _, _ in rules]
        if all(r is not None for r in reused):
            return reused
    rows = []
    for fit_name, rules, recipe in fits:
        # recipes with the same architecture, data and pretraining share one dense network (fair comparison),
        # kept on disk so later invocations and the other experiments find it
        key = json.dumps([_arch(recipe), recipe.data, recipe.pretrain, seed], sort_keys=True)
        dense_dir = Path(args.out) / "_dense" / hashlib.sha1(key.encode()).hexdigest()[:16]
        pretrained = (dense_dir / "model.json").is_file()
        fit_dir = base / fit_name
        resume = args.reuse and (fit_dir / "checkpoint" / "checkpoint.json").is_file()
        fit_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        run = run_recipe(
            recipe,
            fit_dir,
            device=args.device,
            data_root=args.data,
            resume=resume,
            progress=args.progress,
            dense=load_pruned(dense_dir) if pretrained and not resume else None,
        )
        if not pretrained:
            save_pruned(run.dense, dense_dir, arch=_arch(recipe))
        fit_seconds = time.perf_counter() - t0
        plans = {}
        for label, rule, params in rules:
            t = time.perf_counter()
            if label == rules[0][0]:
                result, metrics = run.result, dict(run.metrics)
            else:
                params = dict(params)
                if "match" in params:
                    params["match"] = plans[params["match"]]
                result = decide_again(run.result, run.data, rule, params, progress=args.progress)
                metrics = measure_result(result, run.dense, run.data, model=recipe.model["name"])
                metrics["method_params"] = {k: v for k, v in metrics["method_params"].items() if k != "match"}
            plans[label] = result.plan
            metrics.update(
                recipe=name,
                seed=seed,
                seconds=time.perf_counter() - t,
                fit_seconds=fit_seconds,
                recipe_run=_settings(recipe),
            )
            _write_row(dirs[label], result, metrics, label, _arch(recipe))
            rows.append({**metrics, "label": label})
            print(
                f"{name} seed {seed} {label:40s} error {metrics['error_pct']:.2f} %  kept "
                f"{metrics['pruned']['kept']}  params /{metrics['params_reduction']:.2f}  "
                f"MACs /{metrics['macs_reduction']:.2f}",
                flush=True,
            )
        # the dense network once per experiment and seed (the same for every fit), for the latency pass
        save_pruned(run.dense, base / "dense", arch=_arch(recipe))
    return rows


def _settings(recipe) -> dict:
    """What a row was computed with (the recipe as run, without its free-text description)."""
    d = recipe_to_dict(recipe)
    d.pop("description", None)
    return d


def _finished_row(directory: Path, recipe) -> dict | None:
    """The row stored in ``directory`` if it was computed with ``recipe``'s settings, else ``None``."""
    path = directory / "metrics.json"
    if not path.is_file():
        return None
    row = json.loads(path.read_text())
    stored = row.get("recipe_run")
    if not isinstance(stored, dict):
        return None
    try:  # settings added to the recipes after the row was computed take their defaults, which it ran with
        stored = _settings(recipe_from_dict({**stored, "description": ""}))
    except (ValueError, TypeError, KeyError):
        return None
    return row if stored == _settings(recipe) else None


def _slug(label: str) -> str:
    keep = "".join(c if c.isalnum() else "-" for c in label.lower())
    return "-".join(p for p in keep.split("-") if p)


def measure_speedups(rows: list[dict], args: argparse.Namespace) -> None:
    """CPU (and CUDA) latency of every row's dense and pruned network, measured alternately in one loop."""
    from pyroprune.runs import load_data

    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    cache = {}
    for row in rows:
        base = Path(args.out) / row["recipe"] / f"seed{row['seed']}"
        if row["recipe"] not in cache:
            spec = dict(load_recipe(row["recipe"], args.sets).data)
            cache[row["recipe"]] = load_data(spec, "cpu", root=args.data).test.x[: args.latency_batch]
        x = cache[row["recipe"]]
        dense = load_pruned(base / "dense")
        pruned = load_pruned(base / _slug(row["label"]) / "model")
        for device in devices:
            xd, dd, pd = x.to(device), dense.to(device), pruned.to(device)
            t_dense, t_pruned = [], []
            for _ in range(args.latency_rounds):  # alternate, so drifts of the machine hit both alike
                t_dense.append(measure_latency(dd, xd, repeats=args.repeats))
                t_pruned.append(measure_latency(pd, xd, repeats=args.repeats))
            row[f"{device.type}_latency_ms"] = {
                "dense": statistics.median(t_dense),
                "pruned": statistics.median(t_pruned),
            }
            row[f"{device.type}_speedup"] = statistics.median(t_dense) / statistics.median(t_pruned)


def aggregate(rows: list[dict]) -> list[dict]:
    """One table row per (experiment, rule): means over seeds (and the spread of the error)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["recipe"], r["label"]), []).append(r)
    out = []
    for (recipe, label), rs in groups.items():
        rs.sort(key=lambda r: r["seed"])
        errors = [r["error_pct"] for r in rs]
        out.append(
            {
                "model": MODEL_NAMES.get(rs[0]["model"], rs[0]["model"]),
                "dataset": rs[0]["dataset"],
                "method": label,
                "error_pct": statistics.mean(errors),
                "error_pct_sd": statistics.stdev(errors) if len(errors) > 1 else None,
                "dense_error_pct": statistics.mean(100 * (1 - r["dense"]["accuracy"]) for r in rs),
                "kept": rs[0]["pruned"]["kept"],
                "kept_per_seed": [r["pruned"]["kept"] for r in rs],
                "dense_kept": rs[0]["dense"]["kept"],
                "params_reduction": statistics.mean(r["params_reduction"] for r in rs),
                "flops_reduction": statistics.mean(r["macs_reduction"] for r in rs),
                "cpu_speedup": statistics.mean(r["cpu_speedup"] for r in rs),
                "gpu_speedup": (statistics.mean(r["cuda_speedup"] for r in rs) if "cuda_speedup" in rs[0] else None),
                "seeds": [r["seed"] for r in rs],
                "recipe": recipe,
                "source": "pyroprune",
            }
        )
    return out


def published_rows(names: list[str]) -> list[dict]:
    rows = []
    for name in names:
        recipe = load_recipe(name)
        for p in EXPERIMENTS[name]:
            rows.append(
                {
                    "model": MODEL_NAMES.get(recipe.model["name"], recipe.model["name"]),
                    "dataset": recipe.data["name"],
                    "params_reduction": None,
                    "flops_reduction": None,
                    "cpu_speedup": None,
                    "gpu_speedup": None,
                    **p,
                    "recipe": name,
                }
            )
    return rows


def _fmt(v, spec: str = ".2f", suffix: str = "") -> str:
    return "–" if v is None else f"{v:{spec}}{suffix}"


def markdown(ours: list[dict], published: list[dict], args: argparse.Namespace, seconds: float) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    lines = [
        "# Results: MNIST tables beside the published numbers",
        "",
        "Generated by `benchmarks/paper_tables.py`; do not edit by hand (the same rows are in `results.json`).",
        "",
        f"- Produced {now} in {seconds / 60:.0f} min"
        + (
            " (with `--reuse`: rows finished by earlier invocations with the same settings are read back)"
            if args.reuse
            else ""
        )
        + f" on {platform.machine()} / {platform.system()}, "
        f"{torch.get_num_threads()} CPU threads, GPU: {gpu}; torch {torch.__version__}, device for training: "
        f"{args.device}.",
        f"- Command: `python benchmarks/paper_tables.py {' '.join(sys.argv[1:])}`",
        f"- Epochs: {args.pretrain_epochs} dense pretraining; {args.svi_epochs} SVI (post-training schedule, one "
        f"fit shared by every rule"
        + (f", guide learning rate {args.guide_lr} to make up for the short fit" if args.guide_lr else "")
        + f"); RBP: {args.rbp_epochs} SVI epochs per layer (its recursive schedule, one fit per rule, the "
        f"recipe's other settings); DLLP: {args.dllp_epochs} SVGD epoch(s)"
        + (f" with {args.dllp_particles} particles" if args.dllp_particles else "")
        + " (network weights fixed, one fit for both selections); "
        f"{args.finetune_epochs} fine-tuning epochs per rule (best validation epoch "
        "kept). The papers train 200 + 200 epochs (SBP), so these are short runs, not reproductions. "
        f"Seeds: {', '.join(map(str, args.seeds))}"
        + "".join(f"; {item}" for item in args.seeds_for)
        + f". Recipe overrides: {', '.join(args.sets) or 'none'}. "
        "Every rule of an architecture starts from the same pretrained dense network.",
        "- Error: test error (10,000 MNIST test images) in percent, mean over seeds (± sd with several seeds). "
        "Kept: structures kept per gated layer (input features first where the recipe gates them), first seed. "
        "FLOPs: multiply-accumulates per image, dense / pruned, counted by Torch-Pruning. Speed-up: dense / pruned "
        f"median latency of one forward pass of {args.latency_batch} test images ({args.latency_rounds} alternating "
        f"rounds × median of {args.repeats}), measured after all training in one process.",
        "- Published rows are quoted from the papers (see `source`), on their hardware; '–' = not reported.",
        "",
    ]
    by_model: dict[str, list[dict]] = {}
    for r in published + ours:
        by_model.setdefault(r["model"], []).append(r)
    for model, rows in by_model.items():
        dense = next((r for r in rows if r["source"] == "pyroprune"), None)
        lines += [f"## {model} on MNIST", ""]
        if dense is not None:
            lines += [f"Dense network: {dense['dense_kept']}, test error {dense['dense_error_pct']:.2f} %.", ""]
        lines += [
            "| method | source | seeds | error % | kept | params ↓ | FLOPs ↓ | CPU speed-up | GPU speed-up |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            err = _fmt(r["error_pct"])
            if r.get("error_pct_sd") is not None:
                err += f" ± {r['error_pct_sd']:.2f}"
            lines.append(
                f"| {r['method']} | {r['source']} | {len(r.get('seeds', [])) or '–'} | {err} | {r['kept']} | "
                f"{_fmt(r['params_reduction'], suffix='×')} | "
                f"{_fmt(r['flops_reduction'], suffix='×')} | {_fmt(r['cpu_speedup'], suffix='×')} | "
                f"{_fmt(r.get('gpu_speedup'), suffix='×')} |"
            )
        lines.append("")
    return "\n".join(lines)


def _seeds_for(items: list[str], names: list[str]) -> dict[str, list[int]]:
    out = {}
    for item in items:
        name, sep, seeds = item.partition("=")
        if not sep or name not in names:
            raise SystemExit(f"--seeds-for {item!r}: expected NAME=S1,S2 with NAME one of {', '.join(names)}")
        try:
            out[name] = [int(v) for v in seeds.split(",")]
        except ValueError:
            raise SystemExit(f"--seeds-for {item!r}: seeds must be integers") from None
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data"), help="folder holding MNIST/")
    p.add_argument("--out", default=str(ROOT / "runs" / "paper_tables"), help="run directories (one per row)")
    p.add_argument("--only", nargs="+", default=None, help="experiments (built-in recipe names) to run")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument(
        "--seeds-for",
        nargs="+",
        default=[],
        metavar="NAME=S1,S2",
        help="other seeds for some experiments (e.g. the cheap MLPs), e.g. lenet-300-100-mnist=0,1,2",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--pretrain-epochs", type=int, default=10)
    p.add_argument("--svi-epochs", type=int, default=20)
    p.add_argument("--finetune-epochs", type=int, default=3)
    p.add_argument(
        "--guide-lr", type=float, default=None, help="guide learning rate of the shared fits (default: the recipe's)"
    )
    p.add_argument("--rbp-epochs", type=int, default=5, help="SVI epochs per layer of RBP's recursive fits")
    p.add_argument("--dllp-epochs", type=int, default=1, help="SVGD epochs of DLLP's particle fits")
    p.add_argument("--dllp-particles", type=int, default=None, help="DLLP's particles (default: the recipe's)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="recipe override")
    p.add_argument("--reuse", action="store_true", help="read finished rows back; resume interrupted fits")
    p.add_argument("--latency-batch", type=int, default=256)
    p.add_argument("--latency-rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--progress", action="store_true", help="progress bars")
    p.add_argument("--write", default=None, help="write the Markdown table here (e.g. docs/results.md)")
    p.add_argument("--json", default=None, help="write the rows as JSON here (e.g. docs/results.json)")
    args = p.parse_args()
    available = builtin_recipes()
    names = args.only or [n for n in EXPERIMENTS if n in available]
    for n in names:
        if n not in EXPERIMENTS or n not in available:
            raise SystemExit(f"--only: unknown experiment {n!r}; choose from {', '.join(EXPERIMENTS)}")
    t0 = time.perf_counter()
    seeds_for = _seeds_for(args.seeds_for, names)
    rows = [
        row for name in names for seed in seeds_for.get(name, args.seeds) for row in run_experiment(name, seed, args)
    ]
    measure_speedups(rows, args)
    ours, published = aggregate(rows), published_rows(names)
    for r in ours:
        print(
            f"{r['model']:14s} {r['method']:40s} error {r['error_pct']:.2f} %  kept {r['kept']:18s} "
            f"params /{r['params_reduction']:.2f}  FLOPs /{r['flops_reduction']:.2f}  CPU x{r['cpu_speedup']:.2f}"
        )
    seconds = time.perf_counter() - t0
    for r in published + ours:
        missing = [k for k in ROW_KEYS if k not in r]
        if missing:
            raise RuntimeError(f"row {r['method']!r} lacks {missing}")
    if args.write:
        atomic_write_text(Path(args.write), markdown(ours, published, args, seconds) + "\n")
        print(f"wrote {args.write}")
    if args.json:
        doc = {
            "generated_by": "benchmarks/paper_tables.py",
            "produced_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv),
            "hardware": {
                "machine": platform.machine(),
                "cpu_threads": torch.get_num_threads(),
                "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            },
            "rows": published + ours,
        }
        atomic_write_text(Path(args.json), json.dumps(doc, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
