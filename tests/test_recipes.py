"""Experiment recipes: every shipped file loads, overrides, round-trip, and one-line errors naming the dotted key."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from pyroprune.models import MODEL_REGISTRY
from pyroprune.pipeline import PruneConfig
from pyroprune.recipes import DATASETS, Recipe, apply_overrides, load_recipe, recipe_from_dict, recipe_to_dict

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
RECIPE_FILES = sorted(RECIPES.glob("*.toml"))

EXPECTED = {
    "sbp-lenet-500-300-mnist",
    "sbp-lenet5-caffe-mnist",
    "bmrs-mlp-mnist",
    "bmrs-lenet5-mnist",
    "lenet-300-100-mnist",
    "vgg-like-cifar10",
    "resnet56-cifar10",
}


def minimal() -> dict:
    """The smallest valid recipe."""
    return {
        "name": "t",
        "model": {"name": "bmrs-mlp", "kwargs": {"in_features": 64}},
        "data": {"name": "digits"},
        "prune": {"method": "bmrs-n", "method_params": {}},
    }


def error_of(d: dict) -> str:
    with pytest.raises(ValueError) as info:
        recipe_from_dict(d)
    message = str(info.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------------------------- shipped files


def test_all_published_experiments_present():
    assert EXPECTED <= {p.stem for p in RECIPE_FILES}


@pytest.mark.parametrize("path", RECIPE_FILES, ids=lambda p: p.stem)
def test_recipe_file_loads_and_validates(path):
    recipe = load_recipe(path)
    assert isinstance(recipe, Recipe)
    assert recipe.name == path.stem
    assert recipe.source == str(path)
    assert recipe.description and "\n" not in recipe.description
    assert recipe.model["name"] in MODEL_REGISTRY
    assert recipe.data["name"] in DATASETS
    assert set(recipe.data) <= {"name", "root", "val_size", "seed", "flatten"}
    recipe.prune.validate()
    assert set(recipe.pretrain) == {"epochs", "lr", "batch_size"}
    assert recipe_from_dict(recipe_to_dict(recipe), source=str(path)) == recipe


@pytest.mark.parametrize("path", RECIPE_FILES, ids=lambda p: p.stem)
def test_recipe_file_builds_its_model(path):
    recipe = load_recipe(path, ["model.kwargs.width=0.125"] if path.stem.startswith("vgg") else [])
    net = MODEL_REGISTRY[recipe.model["name"]](**recipe.model["kwargs"])
    assert sum(p.numel() for p in net.parameters()) > 0


def test_paper_settings():
    sbp = load_recipe(RECIPES / "sbp-lenet5-caffe-mnist.toml")
    assert (sbp.prune.method, sbp.prune.epochs, sbp.prune.method_params) == ("snr", 200, {"threshold": 1.0})
    assert (sbp.prune.prior_low, sbp.prune.prior_high, sbp.prune.init_log_scale) == (-20.0, 0.0, -5.0)
    for stem in ("bmrs-mlp-mnist", "bmrs-lenet5-mnist"):
        r = load_recipe(RECIPES / f"{stem}.toml")
        assert (r.prune.method, r.prune.kl_weighting, r.prune.schedule) == ("bmrs-n", "bmrs", "continuous")
        assert r.prune.finetune_epochs == 10
    assert load_recipe(RECIPES / "lenet-300-100-mnist.toml").prune.method == "bmrs-n"


# ------------------------------------------------------------------------------------------------ overrides


def test_overrides_dotted_keys_and_types():
    sets = [
        "prune.epochs=2",
        "prune.lr=1e-3",
        "prune.method_params.threshold=2",
        "model.kwargs.width=0.5",
        "data.name=cifar10",
        'description="quoted"',
        "pretrain.epochs = 0",
    ]
    out = apply_overrides({"prune": {"epochs": 200}, "model": {"name": "vgg-like"}}, sets)
    assert out["prune"] == {"epochs": 2, "lr": 1e-3, "method_params": {"threshold": 2}}
    assert type(out["prune"]["epochs"]) is int
    assert out["model"] == {"name": "vgg-like", "kwargs": {"width": 0.5}}
    assert out["data"] == {"name": "cifar10"}
    assert out["description"] == "quoted"
    assert out["pretrain"] == {"epochs": 0}


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("2", 2),
        ("1e-3", 1e-3),
        ("true", True),
        ('"x"', "x"),
        ("[1,2]", [1, 2]),
        ("snr", "snr"),
        ("", ""),
        ("a b", "a b"),
    ],
)
def test_override_value_parsing(text, value):
    out = apply_overrides({}, [f"a.b={text}"])["a"]["b"]
    assert out == value and type(out) is type(value)


def test_overrides_leave_input_alone():
    d = minimal()
    apply_overrides(d, ["prune.method_params.amount=0.5"])
    assert d == minimal()


@pytest.mark.parametrize("item", ["prune.epochs", "=2", "prune..epochs=2", "name.x=1"])
def test_malformed_override(item):
    with pytest.raises(ValueError, match="override"):
        apply_overrides({"name": "t"}, [item])


def test_load_recipe_with_overrides():
    recipe = load_recipe(
        RECIPES / "sbp-lenet5-caffe-mnist.toml",
        ["prune.epochs=2", "prune.method_params.threshold=2", "model.kwargs.input_size=8", "prune.lr=1"],
    )
    assert recipe.prune.epochs == 2
    assert recipe.prune.method_params == {"threshold": 2.0}
    assert type(recipe.prune.method_params["threshold"]) is float
    assert recipe.model["kwargs"] == {"input_size": 8}
    assert recipe.prune.lr == 1.0 and type(recipe.prune.lr) is float


def test_override_error_names_file(tmp_path):
    path = RECIPES / "bmrs-mlp-mnist.toml"
    with pytest.raises(ValueError, match=r"bmrs-mlp-mnist\.toml: 'prune\.epochs' must be an integer, got '2x'"):
        load_recipe(path, ["prune.epochs=2x"])


# ------------------------------------------------------------------------------------------------ round trip


def test_defaults_and_round_trip():
    recipe = recipe_from_dict(minimal())
    assert recipe.description == ""
    assert recipe.pretrain == {"epochs": 0, "lr": 1e-3, "batch_size": 128}
    assert recipe.data == {"name": "digits"}
    default = PruneConfig()
    assert recipe.prune == dataclasses.replace(default, method="bmrs-n")
    d = recipe_to_dict(recipe)
    assert json.loads(json.dumps(d)) == d
    assert "source" not in d
    assert recipe_from_dict(d) == recipe
    assert recipe_from_dict(json.loads(json.dumps(d))) == recipe


def test_name_defaults_to_file_stem(tmp_path):
    d = minimal()
    del d["name"]
    with pytest.raises(ValueError, match="missing required key 'name'"):
        recipe_from_dict(d)
    assert recipe_from_dict(d, source=str(tmp_path / "my-run.toml")).name == "my-run"


def test_prune_keys_follow_pruneconfig_fields():
    for f in dataclasses.fields(PruneConfig):
        if f.name in ("method", "method_params"):
            continue
        d = minimal()
        d["prune"][f.name] = getattr(PruneConfig(), f.name)
        recipe_from_dict(d)


# --------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("section", "key", "suggestion"),
    [
        ("prune", "epoch", "prune.epochs"),
        ("pretrain", "epoch", "pretrain.epochs"),
        ("data", "val_sise", "data.val_size"),
        ("data", "flaten", "data.flatten"),
        ("model", "kwarg", "model.kwargs"),
    ],
)
def test_unknown_key_with_suggestion(section, key, suggestion):
    d = minimal()
    d.setdefault(section, {})[key] = 1
    assert f"unknown key '{section}.{key}' (did you mean '{suggestion}'?)" in error_of(d)


def test_unknown_top_level_and_nested_keys():
    d = minimal()
    d["prunes"] = {}
    assert "unknown key 'prunes' (did you mean 'prune'?)" in error_of(d)
    d = minimal()
    d["prune"]["method_params"] = {"treshold": 1.0}
    d["prune"]["method"] = "snr"
    assert "unknown key 'prune.method_params.treshold' (did you mean 'prune.method_params.threshold'?)" in error_of(d)
    d = minimal()
    d["model"]["kwargs"]["hiden"] = 3
    assert "unknown key 'model.kwargs.hiden' (did you mean 'model.kwargs.hidden'?)" in error_of(d)


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("prune.epochs", "2x", "'prune.epochs' must be an integer, got '2x'"),
        ("prune.epochs", True, "'prune.epochs' must be an integer, got True"),
        ("prune.epochs", 2.5, "'prune.epochs' must be an integer, got 2.5"),
        ("prune.lr", "fast", "'prune.lr' must be a number, got 'fast'"),
        ("prune.lr", False, "'prune.lr' must be a number, got False"),
        ("prune.method_params", [1], "'prune.method_params' must be a table, got [1]"),
        ("pretrain.batch_size", True, "'pretrain.batch_size' must be an integer, got True"),
        ("data.root", 3, "'data.root' must be a string, got 3"),
        ("data.flatten", 1, "'data.flatten' must be a boolean, got 1"),
        ("data.seed", "0", "'data.seed' must be an integer, got '0'"),
        ("model.kwargs.depth", "six", "'model.kwargs.depth' must be an integer, got 'six'"),
        ("description", 1, "'description' must be a string, got 1"),
        ("prune", "snr", "'prune' must be a table, got 'snr'"),
    ],
)
def test_wrong_type(path, value, expected):
    d = apply_overrides(minimal(), [])
    *parents, last = path.split(".")
    node = d
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    assert expected in error_of(d)


def test_ints_accepted_for_floats():
    d = minimal()
    d["prune"].update(lr=1, prior_low=-20)
    recipe = recipe_from_dict(d)
    assert type(recipe.prune.lr) is float and type(recipe.prune.prior_low) is float


@pytest.mark.parametrize("path", ["model.name", "data.name", "prune.method", "model", "data", "prune"])
def test_missing_required(path):
    d = minimal()
    *parents, last = path.split(".")
    node = d
    for p in parents:
        node = node[p]
    del node[last]
    assert f"missing required key '{path}'" in error_of(d)


def test_unknown_model_data_method_schedule():
    d = minimal()
    d["model"]["name"] = "lenet5-cafe"
    message = error_of(d)
    assert "'model.name'" in message and "'lenet5-cafe'" in message and "did you mean 'lenet5-caffe'" in message
    assert all(name in message for name in MODEL_REGISTRY)
    d = minimal()
    d["data"]["name"] = "imagenet"
    message = error_of(d)
    assert "'data.name'" in message and "'imagenet'" in message and "cifar10" in message
    d = minimal()
    d["prune"]["method"] = "bmrs"
    message = error_of(d)
    assert "'prune.method'" in message and "bmrs-n" in message and "snr" in message
    d = minimal()
    d["prune"]["schedule"] = "continous"
    assert "'prune.schedule'" in error_of(d) and "did you mean 'continuous'" in error_of(d)
    d = minimal()
    d["prune"]["kl_weighting"] = "proper"
    assert "'prune.kl_weighting'" in error_of(d)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("prior_low", 1.0, "recipe 't': 'prune.prior_low' must be < 'prune.prior_high'"),
        ("epochs", -1, "recipe 't': 'prune.epochs' must be >= 0"),
        ("batch_size", 0, "recipe 't': 'prune.batch_size' must be > 0"),
        ("lr", 0.0, "recipe 't': 'prune.lr' must be > 0"),
    ],
)
def test_invalid_pruneconfig_value(key, value, expected):
    d = minimal()
    d["prune"][key] = value
    assert expected in error_of(d)


@pytest.mark.parametrize(("key", "value"), [("epochs", -1), ("lr", 0.0), ("batch_size", 0)])
def test_invalid_pretrain_value(key, value):
    d = minimal()
    d["pretrain"] = {key: value}
    assert f"'pretrain.{key}' must be" in error_of(d)


# ---------------------------------------------------------------------------------------------------- files


def test_malformed_toml_names_file_and_line(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text('name = "x"\n[model]\nname = \n')
    with pytest.raises(ValueError) as info:
        load_recipe(path)
    message = str(info.value)
    assert str(path) in message and "line 3" in message


def test_invalid_recipe_in_file_names_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[model]\nname = "bmrs-mlp"\n[data]\nname = "digits"\n[prune]\nmethod = "snr"\nepoch = 3\n')
    with pytest.raises(ValueError, match=r"bad\.toml: unknown key 'prune\.epoch' \(did you mean 'prune\.epochs'\?\)"):
        load_recipe(path)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.toml"
    with pytest.raises(FileNotFoundError, match="nope.toml"):
        load_recipe(path)


def test_builtin_recipes_by_name():
    from pyroprune.recipes import builtin_recipes, resolve_recipe

    builtin = builtin_recipes()
    assert set(builtin) == {p.stem for p in RECIPES.glob("*.toml")}
    recipe = load_recipe("sbp-lenet5-caffe-mnist", ["prune.epochs=3"])
    assert recipe.name == "sbp-lenet5-caffe-mnist" and recipe.prune.epochs == 3
    assert resolve_recipe("sbp-lenet5-caffe-mnist.toml") == builtin["sbp-lenet5-caffe-mnist"]


def test_unknown_recipe_name_lists_the_builtin_ones(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"recipe file not found: .*no-such.*built-in recipes: .*sbp-lenet5"):
        load_recipe("no-such-recipe")
    with pytest.raises(FileNotFoundError, match="recipe file not found"):
        load_recipe(tmp_path / "missing.toml")
