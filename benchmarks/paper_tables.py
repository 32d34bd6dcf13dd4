"""The MNIST tables: pyroprune's rows beside the published ones, written to docs/results.md and docs/results.json.

For each experiment (a built-in recipe) and seed, the dense network is pretrained and the gate posterior fitted
ONCE (post-training schedule, :func:`pyroprune.experiment.run_recipe` -- the computation ``pyroprune prune``
does), then every rule decides from that same posterior, the pruned network is removed physically and fine-tuned
(:func:`pyroprune.pipeline.decide_again`). Recipes whose schedule ties the fit to the rule (RBP's recursive
schedule) are run once with their own rule; DLLP's SVGD fit (network weights fixed) serves its two selections.
SR-init (``schedule="reinit"``, depth pruning of residual blocks) scores the blocks once and decides twice from
that scoring: the recipe's P(drop <= tau) >= 0.95 and P(drop <= tau) >= 1/2, the closest to the paper's one
measurement; a recipe with an SR-init depth stage before a width method (``depth="srinit"``) is run once with
its own rule and schedule. Every row is a run directory under ``--out`` (the pruned model and
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

#: SR-init's decisions from one block scoring (``schedule="reinit"``): parameters over the recipe's. The second
#: only where the recipe decides by a threshold ``tau``: the paper removes a block iff its one measured drop is
#: <= tau, and P(drop <= tau) >= 1/2 (the posterior median below tau) is the closest to that.
SRINIT_DECISIONS = [{}, {"prob": 0.5}]

#: The paper's figures (Tang, Lu & Xuan 2023, as quoted in DESIGN.md): reductions in percent of the dense
#: network, accuracy change in points; not run here (no CIFAR or ImageNet offline).
_SRINIT_SOURCE = "Tang, Lu & Xuan 2023 (SR-init)"
_SRINIT_METHOD = "SR-init (τ hand-set, one seed, scored on the test set)"


def _published_srinit(model: str, dataset: str, params_pct: float, accuracy_change: float, flops_pct=None) -> dict:
    return {
        "model": model,
        "dataset": dataset,
        "method": _SRINIT_METHOD,
        "source": _SRINIT_SOURCE,
        "error_pct": None,
        "accuracy_change_pts": accuracy_change,
        "kept": None,
        "params_reduction": 1.0 / (1.0 - params_pct / 100.0),
        "flops_reduction": None if flops_pct is None else 1.0 / (1.0 - flops_pct / 100.0),
        "quoted": f"−{params_pct} % parameters"
        + ("" if flops_pct is None else f", −{flops_pct} % FLOPs")
        + f", {'+' if accuracy_change >= 0 else '−'}{abs(accuracy_change)} % "
        + ("top-1 accuracy" if dataset == "imagenet" else "accuracy"),
    }


#: The experiments: built-in recipe -> published rows quoted beside ours (DESIGN.md; the papers' tables). A
#: published row may name its own ``model`` and ``dataset`` (SR-init's ResNets); it then gets its own section.
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
    # SR-init (one scoring, two decisions); the paper has no MNIST figures: its ResNet figures for reference
    "srinit-resnet20-mnist": [
        _published_srinit("ResNet-56", "cifar10", 63.98, +0.56),
        _published_srinit("ResNet-56", "cifar100", 37.71, -0.8),
        _published_srinit("ResNet-50", "imagenet", 39.29, -0.6, flops_pct=15.59),
    ],
    # SR-init's blocks, then BMRS_N's channels of the shallower network (its own rule and schedule)
    "srinit-bmrs-resnet20-mnist": [],
}

MODEL_NAMES = {
    "lenet-500-300": "LeNet-500-300",
    "lenet5-caffe": "LeNet-5-Caffe",
    "lenet-300-100": "LeNet-300-100",
    "bmrs-mlp": "BMRS MLP",
    "bmrs-lenet5": "BMRS LeNet-5",
    "small-resnet": "small ResNet-20 (8-16-32 channels)",
}

#: The settings of an SR-init row's run recorded in its results.json row.
SRINIT_SETTINGS = (
    "schedule",
    "epochs",
    "reinit_seeds",
    "reinit_init",
    "bootstrap",
    "bootstrap_draws",
    "depth_params",
    "depth_finetune_epochs",
)

DATASET_LABELS = {"mnist": "MNIST", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "imagenet": "ImageNet"}

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
    schedule = recipe.prune.schedule
    # SVI fits of gates (shared, or the width stage after SR-init's blocks) take --svi-epochs; SR-init's scoring
    # has no epochs (the recipe's value is kept, unused)
    svi_fit = shared_fit or schedule in ("post-training", "continuous")
    own_epochs = {"svgd": args.dllp_epochs, "recursive": args.rbp_epochs}.get(schedule, recipe.prune.epochs)
    d["prune"].update(
        epochs=args.svi_epochs if svi_fit else own_epochs, finetune_epochs=args.finetune_epochs, seed=seed
    )
    if schedule == "svgd" and args.dllp_particles is not None:
        d["prune"]["num_particles"] = args.dllp_particles
    _, method, params = rule
    d["prune"].update(method=method, method_params=dict(params))
    if shared_fit:
        # one posterior for every rule: the post-training schedule (the fit does not depend on the rule)
        d["prune"]["schedule"] = "post-training"
    if svi_fit and args.guide_lr is not None:
        d["prune"]["guide_lr"] = args.guide_lr
    return recipe_from_dict(d, source=recipe.source)


def _srinit_label(params: dict) -> str:
    """The row label of an SR-init decision: its threshold and probability, or its budget."""
    if "tau" in params:
        prob = params.get("prob", 0.95)
        paper = " (≈ the paper's one-measurement rule)" if prob == 0.5 else ""
        return f"SR-init: P(drop ≤ {params['tau']:g} pt) ≥ {prob:g}{paper}"
    key, value = next((k, v) for k, v in params.items() if k in ("params_reduction", "flops_reduction"))
    return f"SR-init: {value:.0%} of the {'parameters' if key == 'params_reduction' else 'FLOPs'} removed"


def _width_label(method: str, params: dict) -> str:
    """The label of the most specific of :data:`RULES` whose method is ``method`` and whose parameters ``params``
    share (e.g. ``BMRS_N (public-code ΔF)`` for ``include_log_2pi = false``); the method's name if none."""
    shared = [(len(p), label) for label, m, p in RULES if m == method and all(params.get(k) == v for k, v in p.items())]
    return max(shared)[1] if shared else method


def _fits(recipe) -> list[tuple[str, list[tuple[str, str, dict]], bool]]:
    """(fit directory, rules decided from that fit, shared?) for a recipe."""
    own = dict(recipe.prune.method_params)
    if recipe.prune.schedule == "svgd":  # DLLP: one particle fit (rule-free), both of its selections
        return [("fit-dllp", [(label, m, {**own, **p}) for label, m, p in DLLP_RULES], False)]
    if recipe.prune.schedule == "reinit":  # SR-init: one scoring (rule-free), its decisions
        decisions = [{**own, **p} for p in SRINIT_DECISIONS[: 2 if "tau" in own else 1]]
        return [("fit-srinit", [(_srinit_label(p), "srinit", p) for p in decisions], False)]
    if recipe.prune.depth != "none":  # SR-init's blocks, then the width method: the recipe's own rule and schedule
        label = f"{_srinit_label(recipe.prune.depth_params)}, then {_width_label(recipe.prune.method, own)}"
        return [("fit-depth", [(label, recipe.prune.method, own)], False)]
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
    if result.depth is not None and result.depth.plan is not result.plan:  # depth, then width: the block plan
        result.depth.plan.save(directory / "depth-plan.json")
    atomic_write_text(directory / "metrics.json", json.dumps({**metrics, "label": label}, indent=1))


def _decide_again(run, rule: str, params: dict, progress: bool):
    """Another rule from the fit (or, for SR-init, the block scoring) ``run`` holds: decide, remove, fine-tune."""
    return decide_again(run.result, run.data, rule, params, progress=progress, net=run.dense)


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
        # only a gate fit without a depth stage resumes (SR-init's scoring and the stage are not checkpointed)
        resumable = recipe.prune.depth == "none" and recipe.prune.schedule != "reinit"
        resume = resumable and args.reuse and (fit_dir / "checkpoint" / "checkpoint.json").is_file()
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
                result = _decide_again(run, rule, params, args.progress)
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
                f"{_kept(metrics, 'pruned')}  params /{metrics['params_reduction']:.2f}  "
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


def _kept(metrics: dict, which: str) -> str:
    """The kept (``which="pruned"``) or total (``"dense"``) structures of a row: per gated layer; for SR-init the
    removable blocks per stage (the blocks that change shape are never candidates), and after a depth stage both."""
    depth = metrics.get("depth")
    if depth is None:
        return metrics[which]["kept"]
    blocks = depth["blocks_kept"] if which == "pruned" else depth["blocks_total"]
    if which == "dense":  # (after a depth stage metrics["dense"]["kept"] counts the shallower network's channels)
        return f"{blocks} removable blocks per stage"
    if metrics["method"] == "srinit":  # the plan is the block plan
        return f"{blocks} of {depth['blocks_total']} blocks"
    return f"{blocks} of {depth['blocks_total']} blocks; channels {metrics['pruned']['kept']}"


def aggregate(rows: list[dict]) -> list[dict]:
    """One table row per (experiment, rule): means over seeds (and the spread of the error)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["recipe"], r["label"]), []).append(r)
    out = []
    for (recipe, label), rs in groups.items():
        rs.sort(key=lambda r: r["seed"])
        errors = [r["error_pct"] for r in rs]
        dense_errors = [100 * (1 - r["dense"]["accuracy"]) for r in rs]
        row = {
            "model": MODEL_NAMES.get(rs[0]["model"], rs[0]["model"]),
            "dataset": rs[0]["dataset"],
            "method": label,
            "error_pct": statistics.mean(errors),
            "error_pct_sd": statistics.stdev(errors) if len(errors) > 1 else None,
            "dense_error_pct": statistics.mean(dense_errors),
            "accuracy_change_pts": statistics.mean(d - e for d, e in zip(dense_errors, errors, strict=True)),
            "kept": _kept(rs[0], "pruned"),
            "kept_per_seed": [_kept(r, "pruned") for r in rs],
            "dense_kept": _kept(rs[0], "dense"),
            "params_reduction": statistics.mean(r["params_reduction"] for r in rs),
            "flops_reduction": statistics.mean(r["macs_reduction"] for r in rs),
            "cpu_speedup": statistics.mean(r["cpu_speedup"] for r in rs),
            "gpu_speedup": (statistics.mean(r["cuda_speedup"] for r in rs) if "cuda_speedup" in rs[0] else None),
            "seeds": [r["seed"] for r in rs],
            "recipe": recipe,
            "source": "pyroprune",
        }
        if "depth" in rs[0]:  # SR-init: the removed blocks of every seed, the scoring's settings
            row["removed_blocks_per_seed"] = [r["depth"]["removed_blocks"] for r in rs]
            cfg = rs[0]["recipe_run"]["prune"]
            row["srinit"] = {k: cfg[k] for k in SRINIT_SETTINGS}
        out.append(row)
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
                    "accuracy_change_pts": None,
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
        + _srinit_settings(ours)
        + f"{args.finetune_epochs} fine-tuning epochs per rule (best validation epoch "
        "kept). The papers train 200 + 200 epochs (SBP), so these are short runs, not reproductions. "
        f"Seeds: {', '.join(map(str, args.seeds))}"
        + "".join(f"; {item}" for item in args.seeds_for)
        + f". Recipe overrides: {', '.join(args.sets) or 'none'}. "
        "Every rule of an architecture starts from the same pretrained dense network.",
        "- Error: test error (10,000 MNIST test images) in percent, mean over seeds (± sd with several seeds); "
        "Δ acc.: accuracy of the pruned minus that of the dense network, in percentage points. "
        "Kept: structures kept per gated layer (input features first where the recipe gates them), first seed; "
        "SR-init: residual blocks kept per stage of the removable ones (identity shortcut; the first block of a "
        "stage changes the shape and always stays), and after SR-init's blocks the channels of the shallower "
        "network. "
        "FLOPs: multiply-accumulates per image, dense / pruned, counted by Torch-Pruning. Speed-up: dense / pruned "
        f"median latency of one forward pass of {args.latency_batch} test images ({args.latency_rounds} alternating "
        f"rounds × median of {args.repeats}), measured after all training in one process.",
        "- Published rows are quoted from the papers (see `source`), on their hardware; '–' = not reported. "
        "Sections without a pyroprune row quote a paper's results on data not available here, for reference; "
        "reductions given in percent are shown as ratios (−63.98 % parameters = 2.78×).",
        "",
    ]
    sections: dict[tuple[str, str], list[dict]] = {}
    for r in published + ours:
        sections.setdefault((r["model"], r["dataset"]), []).append(r)
    # sections with our rows first, the published-only (reference) ones after them
    order = sorted(sections, key=lambda k: all(r["source"] != "pyroprune" for r in sections[k]))
    for model, dataset in order:
        rows = sections[(model, dataset)]
        dense = next((r for r in rows if r["source"] == "pyroprune"), None)
        lines += [f"## {model} on {DATASET_LABELS.get(dataset, dataset)}", ""]
        if dense is not None:
            lines += [f"Dense network: {dense['dense_kept']}, test error {dense['dense_error_pct']:.2f} %.", ""]
        else:
            lines += ["Published figures only (reference; not run here).", ""]
        lines += [
            "| method | source | seeds | error % | Δ acc. (pts) | kept | params ↓ | FLOPs ↓ | CPU speed-up "
            "| GPU speed-up |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            err = _fmt(r["error_pct"])
            if r.get("error_pct_sd") is not None:
                err += f" ± {r['error_pct_sd']:.2f}"
            source = r["source"] + (f": {r['quoted']}" if r.get("quoted") else "")
            lines.append(
                f"| {r['method']} | {source} | {len(r.get('seeds', [])) or '–'} | {err} | "
                f"{_fmt(r.get('accuracy_change_pts'), '+.2f').replace('-', '−')} | {r['kept'] or '–'} | "
                f"{_fmt(r['params_reduction'], suffix='×')} | "
                f"{_fmt(r['flops_reduction'], suffix='×')} | {_fmt(r['cpu_speedup'], suffix='×')} | "
                f"{_fmt(r.get('gpu_speedup'), suffix='×')} |"
            )
        lines.append("")
    return "\n".join(lines)


def _srinit_settings(ours: list[dict]) -> str:
    """The Epochs sentence's part on SR-init rows (empty without them): scoring and depth fine-tuning."""
    runs = {}
    for r in ours:
        if "srinit" in r:
            runs.setdefault(r["recipe"], r["srinit"])
    if not runs:
        return ""
    parts, said = [], None
    for name, cfg in runs.items():
        scoring = (
            f"{cfg['reinit_seeds']} re-initialisations ({cfg['reinit_init']}) per block scored on the validation "
            f"split, {cfg['bootstrap']} bootstrap ({cfg['bootstrap_draws']} draws)"
        )
        text = "the same scoring" if scoring == said else scoring
        said = scoring
        if cfg["schedule"] == "reinit":
            parts.append(f"{name}: {text}, the decisions from that one scoring")
        else:
            parts.append(
                f"{name}: {text}, {cfg['depth_finetune_epochs']} fine-tuning epochs after removing the blocks, "
                f"then the width rule's {cfg['schedule']} schedule for {cfg['epochs']} SVI epochs"
            )
    return "SR-init: " + "; ".join(parts) + "; "


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
