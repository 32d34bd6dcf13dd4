"""Experiment recipes: one small TOML file per published experiment.

A recipe names an architecture (``[model]``), a data set (``[data]``), an optional dense pre-training
(``[pretrain]``) and every setting of :class:`~pyroprune.pipeline.PruneConfig` (``[prune]``, method
parameters in ``[prune.method_params]``; an SR-init depth stage before the width method reads
``[prune.depth_params]``)::

    name = "sbp-lenet5-caffe-mnist"
    description = "SBP (Neklyudov et al. 2017), LeNet-5-Caffe on MNIST"
    [model]
    name = "lenet5-caffe"
    kwargs = {}
    [data]
    name = "mnist"
    val_size = 5000
    [pretrain]
    epochs = 200
    [prune]
    method = "snr"
    epochs = 200
    [prune.method_params]
    threshold = 1.0

:func:`load_recipe` reads and validates a file, :func:`apply_overrides` applies ``--set key=value`` strings with
dotted keys to the raw dict first, :func:`recipe_from_dict` validates a dict and :func:`recipe_to_dict` gives it
back in JSON-safe form. Every validation error is a one-line :class:`ValueError` naming the key by its full dotted
path (``'prune.epochs'``). The keys and types of ``[prune]`` are derived from the fields of
:class:`~pyroprune.pipeline.PruneConfig`; those of ``[model.kwargs]`` and ``[prune.method_params]`` from the
signatures of the model constructor and the decision rule.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import inspect
import re
import tomllib
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .data import DATASET_NAMES
from .infer import KL_WEIGHTINGS
from .methods import RULES
from .models import MODEL_REGISTRY
from .pipeline import SCHEDULES, PruneConfig

__all__ = [
    "builtin_recipes",
    "resolve_recipe",
    "DATASETS",
    "Recipe",
    "apply_overrides",
    "load_recipe",
    "recipe_from_dict",
    "recipe_to_dict",
]

#: Data set names a recipe may use in ``data.name``.
DATASETS: tuple[str, ...] = DATASET_NAMES

_MISSING = object()

#: Schema of the fixed sections: key -> (type, default); ``_MISSING`` marks a required key, ``None`` an optional
#: key that is left out when absent.
_TOP: dict[str, tuple[type, object]] = {
    "name": (str, _MISSING),
    "description": (str, ""),
    "model": (dict, _MISSING),
    "data": (dict, _MISSING),
    "pretrain": (dict, {}),
    "prune": (dict, _MISSING),
}
_MODEL: dict[str, tuple[type, object]] = {"name": (str, _MISSING), "kwargs": (dict, {})}
_DATA: dict[str, tuple[type, object]] = {
    "name": (str, _MISSING),
    "root": (str, None),
    "val_size": (int, None),
    "seed": (int, None),
    "flatten": (bool, None),
}
_PRETRAIN: dict[str, tuple[type, object]] = {"epochs": (int, 0), "lr": (float, 1e-3), "batch_size": (int, 128)}

_TYPE_NAMES: dict[type, str] = {
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
    dict: "a table",
    list: "an array",
}


@dataclass
class Recipe:
    """One validated experiment.

    :param name: short identifier (by convention the file's stem).
    :param description: one line: paper, architecture, data set, and which settings were chosen here.
    :param model: ``{"name": registry name, "kwargs": constructor keyword arguments}``.
    :param data: ``{"name": data set, ...}`` with the optional keys ``root`` (``--data-root`` overrides it),
        ``val_size`` (validation examples held out of the training set), ``seed`` (of that split) and ``flatten``
        (images as vectors) only where the recipe gives them.
    :param pretrain: ``{"epochs", "lr", "batch_size"}`` of the dense training before gating (``epochs = 0``:
        train with the gates from scratch).
    :param prune: the pruning settings.
    :param source: the file the recipe was read from, if any.
    """

    name: str
    description: str
    model: dict
    data: dict
    pretrain: dict
    prune: PruneConfig
    source: str | None = None


def builtin_recipes() -> dict[str, Path]:
    """The recipes shipped with pyroprune (package ``pyroprune.recipe_files``): name -> file."""
    from importlib.resources import files

    root = files("pyroprune.recipe_files")
    return {p.name.removesuffix(".toml"): Path(str(p)) for p in root.iterdir() if p.name.endswith(".toml")}


def resolve_recipe(path_or_name: str | Path) -> Path:
    """The recipe file ``path_or_name`` names: an existing file, else a built-in recipe's name (see
    :func:`builtin_recipes`).

    :raises FileNotFoundError: naming the path and listing the built-in recipes.
    """
    path = Path(path_or_name)
    if path.is_file():
        return path
    builtin = builtin_recipes()
    name = path.name.removesuffix(".toml")
    if str(path_or_name).removesuffix(".toml") == name and name in builtin:
        return builtin[name]
    raise FileNotFoundError(f"recipe file not found: {path} (built-in recipes: {', '.join(sorted(builtin))})")


def load_recipe(path: str | Path, sets: Sequence[str] = ()) -> Recipe:
    """Read, override and validate a recipe.

    :param path: a ``.toml`` recipe file, or the name of a built-in recipe (``"sbp-lenet5-caffe-mnist"``).
    :param sets: ``key=value`` overrides applied before validation (see :func:`apply_overrides`).
    :raises FileNotFoundError: if ``path`` is neither a file nor a built-in recipe.
    :raises ValueError: if the file is not valid TOML (the message names the file and the line) or the recipe is
        invalid (the message names the file and the dotted key).
    """
    path = resolve_recipe(path)
    try:
        with path.open("rb") as f:
            raw = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: not valid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not valid TOML: {e}") from None
    try:
        return recipe_from_dict(apply_overrides(raw, sets), source=str(path))
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def apply_overrides(d: Mapping[str, Any], sets: Iterable[str]) -> dict:
    """Return a deep copy of ``d`` with each ``key=value`` of ``sets`` applied.

    Keys are dotted paths (``prune.epochs``, ``prune.method_params.k``, ``model.kwargs.width``); missing tables
    on the way are created. A value is parsed as a TOML value where possible (``2``, ``1e-3``, ``true``, ``"x"``,
    ``[1, 2]``, ``{a = 1}``) and kept as a plain string otherwise. Unknown keys are not rejected here but by
    :func:`recipe_from_dict`.

    :raises ValueError: if an item has no ``=``, an empty key part, or a path runs through a non-table value.
    """
    out = copy.deepcopy(dict(d))
    for item in sets:
        key, sep, text = item.partition("=")
        key = key.strip()
        parts = key.split(".")
        if not sep or not all(p.strip() for p in parts):
            raise ValueError(f"override {item!r} must look like 'section.key=value'")
        parts = [p.strip() for p in parts]
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(parts[: i + 1])
                raise ValueError(f"override {item!r}: '{where}' is {_show(child)}, not a table")
            node = child
        node[parts[-1]] = _parse_value(text.strip())
    return out


def recipe_from_dict(d: Mapping[str, Any], source: str | None = None) -> Recipe:
    """Validate the raw recipe ``d`` (as read from TOML) and fill in the defaults.

    ``name`` defaults to the stem of ``source`` when ``source`` is given.

    :raises ValueError: one line naming the dotted key: an unknown key (with the closest valid one), a value of
        the wrong type, a missing required key, an unknown model, data set or method, or a value that
        :meth:`PruneConfig.validate` rejects (prefixed with the recipe name).
    """
    if not isinstance(d, Mapping):
        raise ValueError(f"a recipe must be a table, got {_show(d)}")
    d = dict(d)
    if "name" not in d and source is not None:
        d["name"] = Path(source).stem
    top = _check_table(d, _TOP, "")
    name = top["name"]

    model = _check_table(top["model"], _MODEL, "model")
    if model["name"] not in MODEL_REGISTRY:
        raise ValueError(_unknown_choice("model.name", model["name"], MODEL_REGISTRY, "model"))
    factory = MODEL_REGISTRY[model["name"]]
    model["kwargs"] = _check_signature(model["kwargs"], factory, "model.kwargs", skip=0)

    data = _check_table(top["data"], _DATA, "data")
    if data["name"] not in DATASETS:
        raise ValueError(_unknown_choice("data.name", data["name"], DATASETS, "data set"))
    _check_range(data, "data", positive=("val_size",), nonnegative=("seed",))

    pretrain = _check_table(top["pretrain"], _PRETRAIN, "pretrain")
    _check_range(pretrain, "pretrain", nonnegative=("epochs",), positive=("lr", "batch_size"))

    prune_schema = _prune_schema()
    prune = _check_table(top["prune"], prune_schema, "prune")
    choices = {"method": (RULES, "method"), "schedule": (SCHEDULES, "schedule"), "kl_weighting": (KL_WEIGHTINGS, "")}
    for key, (valid, what) in choices.items():
        if key in prune and prune[key] not in valid:
            raise ValueError(_unknown_choice(f"prune.{key}", prune[key], valid, what or key))
    if "method_params" in prune:
        prune["method_params"] = _check_signature(prune["method_params"], RULES[prune["method"]], "prune.method_params")
    if "depth_params" in prune:  # the depth stage's rule is SR-init's
        prune["depth_params"] = _check_signature(prune["depth_params"], RULES["srinit"], "prune.depth_params")
    config = PruneConfig(**prune)
    try:
        config.validate()
    except ValueError as e:
        raise ValueError(f"recipe {name!r}: {_qualify(str(e), prune_schema)}") from None
    if config.input_gates:
        _check_input_gates(config.input_gates, factory, model)

    return Recipe(
        name=name,
        description=top["description"],
        model=model,
        data=data,
        pretrain=pretrain,
        prune=config,
        source=source,
    )


def recipe_to_dict(recipe: Recipe) -> dict:
    """The recipe as plain JSON-safe data (``source`` left out); ``recipe_from_dict`` of it gives the recipe back."""
    return {
        "name": recipe.name,
        "description": recipe.description,
        "model": copy.deepcopy(recipe.model),
        "data": copy.deepcopy(recipe.data),
        "pretrain": copy.deepcopy(recipe.pretrain),
        "prune": dataclasses.asdict(recipe.prune),
    }


# --------------------------------------------------------------------------------------------------- helpers


def _parse_value(text: str) -> Any:
    """``text`` as a TOML value, or the string itself where it is not one."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _show(value: object) -> str:
    """``value`` for an error message: its repr and, for non-strings, its TOML kind."""
    kind = next((n.split(" ", 1)[1] for t, n in _TYPE_NAMES.items() if type(value) is t), type(value).__name__)
    return repr(value) if isinstance(value, str) else f"{value!r} ({kind})"


def _unknown_key(path: str, key: str, valid: Iterable[str]) -> str:
    match = difflib.get_close_matches(key, list(valid), n=1)
    hint = f" (did you mean '{_join(path, match[0])}'?)" if match else f"; valid keys: {', '.join(valid) or 'none'}"
    return f"unknown key '{_join(path, key)}'{hint}"


def _unknown_choice(path: str, value: object, valid: Iterable[str], what: str) -> str:
    valid = list(valid)
    match = difflib.get_close_matches(str(value), valid, n=1)
    hint = f" (did you mean {match[0]!r}?)" if match else ""
    return f"'{path}': unknown {what} {value!r}{hint}; valid: {', '.join(valid)}"


def _check_table(table: object, schema: Mapping[str, tuple[object, object]], path: str) -> dict:
    """Check ``table`` against ``schema`` (key -> (type, default)) and return it with the defaults filled in."""
    if not isinstance(table, Mapping):
        raise ValueError(f"'{path}' must be a table, got {_show(table)}")
    for key in table:
        if key not in schema:
            raise ValueError(_unknown_key(path, key, schema))
    out = {}
    for key, (tp, default) in schema.items():
        full = _join(path, key)
        if key in table:
            out[key] = _check_type(table[key], tp, full)
        elif default is _MISSING:
            raise ValueError(f"missing required key '{full}'")
        elif default is not None:
            out[key] = copy.deepcopy(default)
    return out


def _check_type(value: object, tp: object, path: str) -> object:
    """``value`` if it is of type ``tp`` (ints widened to floats for ``float``), else a ``ValueError``.

    ``tp`` may be a plain class, a union (``int | None``) or ``Any``; unions accept a value any member accepts.
    Tables and arrays are checked to hold only TOML/JSON data.
    """
    if tp is Any or tp is object:
        return _check_plain(value, path)
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        members = [m for m in typing.get_args(tp) if m is not type(None)]
        for member in members:
            try:
                return _check_type(value, member, path)
            except ValueError:
                continue
        wanted = " or ".join(
            _TYPE_NAMES.get(typing.get_origin(m) or m, getattr(m, "__name__", str(m))) for m in members
        )
        raise ValueError(f"'{path}' must be {wanted}, got {_show(value)}")
    base = origin or tp
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if base in (int, float) and isinstance(value, bool):
        ok = False
    elif base in (dict, list, tuple):
        ok = isinstance(value, dict if base is dict else list)
    elif isinstance(base, type):
        ok = isinstance(value, base)
    else:
        return _check_plain(value, path)
    if not ok:
        raise ValueError(
            f"'{path}' must be {_TYPE_NAMES.get(base, getattr(base, '__name__', str(base)))}, got {_show(value)}"
        )
    return _check_plain(value, path) if base in (dict, list, tuple) else value


def _check_plain(value: object, path: str) -> object:
    """A deep copy of ``value`` if it is JSON-safe data (no TOML dates or times)."""
    if isinstance(value, dict):
        return {k: _check_plain(v, _join(path, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_check_plain(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, str | int | float | bool):
        return value
    raise ValueError(f"'{path}' must be a string, number, boolean, array or table, got {_show(value)}")


def _check_signature(params: Mapping[str, Any], fn: Callable, path: str, skip: int = 2) -> dict:
    """Check the keyword arguments ``params`` against the signature of ``fn`` (after its first ``skip``
    parameters), types from its annotations where they resolve; anything goes where ``fn`` takes ``**kwargs``."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return _check_plain(dict(params), path)
    usable = [
        p
        for p in list(sig.parameters.values())[skip:]
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY, p.VAR_KEYWORD)
    ]
    if any(p.kind is p.VAR_KEYWORD for p in usable):
        return _check_plain(dict(params), path)
    allowed = {p.name: p for p in usable}
    hints = _type_hints(fn)
    out = {}
    for key, value in params.items():
        if key not in allowed:
            raise ValueError(_unknown_key(path, key, allowed))
        out[key] = _check_type(value, hints.get(key, Any), _join(path, key))
    return out


def _type_hints(fn: Callable) -> dict[str, object]:
    """Resolved annotations of ``fn`` (a function, class or ``functools.partial``); ``{}`` where they do not
    resolve."""
    target = fn.func if isinstance(fn, functools.partial) else fn
    if isinstance(target, type):
        target = target.__init__
    try:
        return typing.get_type_hints(target)
    except Exception:  # noqa: BLE001 - unresolvable annotations only switch the type check off
        return {}


def _check_range(
    table: Mapping[str, Any], path: str, positive: Iterable[str] = (), nonnegative: Iterable[str] = ()
) -> None:
    for key in positive:
        if key in table and not table[key] > 0:
            raise ValueError(f"'{_join(path, key)}' must be > 0, got {table[key]!r}")
    for key in nonnegative:
        if key in table and table[key] < 0:
            raise ValueError(f"'{_join(path, key)}' must be >= 0, got {table[key]!r}")


def _check_input_gates(selectors: Sequence[str], factory: Callable, model: Mapping[str, Any]) -> None:
    """Every ``prune.input_gates`` entry must select a ``Linear`` layer of the recipe's model (checked on a
    model built on the ``meta`` device, so before hours of dense pre-training rather than after)."""
    import torch

    from .gates import input_gate_layers

    try:
        with torch.device("meta"):
            net = factory(**model["kwargs"])
    except Exception:  # noqa: BLE001 - a model that cannot be built here is checked when it is gated
        return
    try:
        input_gate_layers(net, list(selectors))
    except ValueError as e:
        raise ValueError(f"'prune.input_gates' ({model['name']}): {str(e).removeprefix('input_gates: ')}") from None


def _prune_schema() -> dict[str, tuple[object, object]]:
    """Key -> (type, default) of ``[prune]`` from the fields of :class:`PruneConfig`; ``method`` is required, the
    other defaults are left to the dataclass (``None``: not filled in here)."""
    hints = typing.get_type_hints(PruneConfig)
    return {
        f.name: (hints.get(f.name, Any), _MISSING if f.name == "method" else None)
        for f in dataclasses.fields(PruneConfig)
    }


def _qualify(message: str, schema: Iterable[str]) -> str:
    """Rewrite ``'field'`` in a :meth:`PruneConfig.validate` message as ``'prune.field'``."""
    names = "|".join(re.escape(k) for k in schema)
    return re.sub(rf"'({names})'", r"'prune.\1'", message)
