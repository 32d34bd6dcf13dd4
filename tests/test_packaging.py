"""Set-up files stay in step: environment.yml vs pyproject.toml, README vs .ci/run, .python-version."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _pip_lines(env_text: str) -> list[str]:
    lines, inside = [], False
    for raw in env_text.splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if re.match(r"^\s*-\s*pip:\s*$", line):
            inside = True
            continue
        if inside:
            m = re.match(r"^\s{4,}-\s*\"?([^\"]+)\"?\s*$", line)
            if m:
                lines.append(m.group(1))
            elif line.strip():
                inside = False
    return lines


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = (ROOT / "environment.yml").read_text()
    assert re.search(r"^\s*-\s*python=3\.12\s*$", env, re.M), "environment.yml must pin python=3.12"
    pip = _pip_lines(env)
    deps = [d for d in pip if not d.startswith("-e")]
    assert sorted(deps) == sorted(project["dependencies"])
    extras = re.search(r"-e \.\[(.*)\]", " ".join(pip))
    assert extras and set(extras.group(1).split(",")) == set(project["optional-dependencies"])
    assert project["requires-python"] == ">=3.12"


def test_python_version_file():
    assert (ROOT / ".python-version").read_text().strip() == "3.12"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```(?:bash|sh)?\n(.*?)```", readme, re.S).group(1)
    commands = [c.strip() for c in block.splitlines() if c.strip() and not c.strip().startswith("#")]
    assert commands == ["make demo", "make test"]
    ci = [
        c for c in (ROOT / ".ci/run").read_text().splitlines() if c.strip() and not c.startswith(("#", "set ", "cd "))
    ]
    assert ci == ["make test"]


def test_models_package_is_mapped_not_top_level():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert cfg["package-dir"]["pyroprune.models"] == "models"
    assert "models" not in cfg["packages"]


def test_wheel_ships_models_and_recipes(tmp_path):
    """The built wheel holds pyroprune.models and every recipe, so ``pyroprune prune NAME`` works when installed."""
    # a copy of the sources, so the build's scratch directories never touch the checkout
    import shutil
    import subprocess
    import sys
    import zipfile

    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", ".git", "runs", "build", "*.egg-info"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."],
        cwd=src,
        check=True,
    )
    (wheel,) = tmp_path.glob("pyroprune-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    recipes = {p.name for p in (ROOT / "recipes").glob("*.toml")}
    assert recipes and {f"pyroprune/recipe_files/{r}" for r in recipes} <= names
    assert "pyroprune/models/__init__.py" in names
