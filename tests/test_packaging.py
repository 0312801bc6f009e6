"""The wheel is a working library and tools without the Makefile or the repository (issue 14).

Builds the wheel from the files the sdist would hold (no network, no build isolation), installs it with
``--no-deps`` into a fresh virtual environment that reuses this environment's installed dependencies through a
``.pth`` file, and runs from outside the repository: ``import zoo``, a pretrained-tag lookup through the shipped
manifest, the shipped recipe configs and the ``recipes`` alias, the clear message for the embedded data, every
console script's ``--help`` (loaded through the installed entry points), and one short export with the
``zoo-export`` script itself.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ("zoo-train", "zoo-export", "zoo-predict", "zoo-convert", "zoo-bench", "zoo-demo", "zoo-save-timm")
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "NOTICE", "zoo", "recipes", "tools", "weights")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in SOURCES:  # a copy, so that the build writes nothing into the shared working tree
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy2)(ROOT / name, src / name, **(
            {"ignore": ignore} if (ROOT / name).is_dir() else {}))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "--quiet", "-w", str(out), str(src)], check=True, capture_output=True, text=True)
    (whl,) = out.glob("zoo-*.whl")
    return whl


def test_wheel_holds_the_code_the_data_and_the_license(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    want = {f"zoo/{p.relative_to(ROOT / 'zoo')}" for p in (ROOT / "zoo").rglob("*.py")}
    want |= {f"zoo_recipes/{p.relative_to(ROOT / 'recipes')}" for p in (ROOT / "recipes").rglob("*.py")}
    want |= {f"zoo_recipes/configs/{p.name}" for p in (ROOT / "recipes" / "configs").glob("*.yaml")}
    want |= {f"zoo_tools/{p.name}" for p in (ROOT / "tools").glob("*.py")}
    want |= {"zoo/weights/manifest.json", "zoo/ops/validated.json", "zoo-0.1.0.dist-info/licenses/LICENSE"}
    missing = sorted(want - names)
    assert not missing, f"not in the wheel (add new packages to [tool.setuptools] packages): {missing}"
    assert not [n for n in names if n.split("/", 1)[0] in ("recipes", "tools", "data", "tests")], "generic names"
    meta = zipfile.ZipFile(wheel).read("zoo-0.1.0.dist-info/METADATA").decode()
    requires = [line for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    core = [r for r in requires if "extra ==" not in r]
    assert not [r for r in requires if "==" in r.split(";")[0]], f"exact pins belong in constraints.txt: {requires}"
    assert not [r for r in core if r.split()[1].startswith(("lightning", "onnx"))], core


CHECK = r"""
import contextlib, importlib.metadata as md, io, json, sys
from pathlib import Path
import timm, zoo
from zoo.models._pretrained import MANIFEST_PATH, manifest_entry
site = Path(zoo.__file__).parents[1]
out = {"zoo": zoo.__file__, "manifest": str(MANIFEST_PATH)}
entry = manifest_entry("nat_mini", "official_in1k")
out["entry"] = entry and {k: entry[k] for k in ("url", "license")}
out["cfg_url"] = timm.models.get_pretrained_cfg("nat_mini.official_in1k").url
import zoo_recipes, recipes.classification as rc, zoo_recipes.classification as zc
out["alias"] = rc is zc and sys.modules["recipes"] is zoo_recipes
from zoo.resources import recipe_config
out["config"] = str(recipe_config("cls_fashion_mnist"))
from recipes.data import NpzData
try:
    NpzData().setup("fit")
except FileNotFoundError as err:
    out["data_error"] = str(err)
helps = {}
for ep in md.distribution("zoo").entry_points:
    if ep.group != "console_scripts":
        continue
    sys.argv = [ep.name, "--help"]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        try:
            code = ep.load()(["--help"])
        except SystemExit as e:
            code = e.code
    helps[ep.name] = (code, buf.getvalue())
out["helps"] = helps
print("RESULT" + json.dumps(out))
"""


def test_installed_wheel_works_outside_the_repository(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    py = env_dir / "bin" / "python"
    site = Path(subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # reuse this environment's packages (torch, timm, lightning, onnx, pip ...) without installing them again
    (site / "_reuse_test_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", HF_HUB_OFFLINE="1", ZOO_OFFLINE="1")
    subprocess.run([py, "-m", "pip", "install", "--quiet", "--no-deps", str(wheel)], check=True, env=env,
                   cwd=tmp_path, capture_output=True, text=True)
    for name in SCRIPTS:
        assert (env_dir / "bin" / name).is_file(), f"console script {name} not installed"

    run = subprocess.run([py, "-c", CHECK], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.split("RESULT", 1)[1])
    assert out["zoo"].startswith(str(site)), out["zoo"]  # the installed copy, not the checkout
    assert out["manifest"] == str(site / "zoo" / "weights" / "manifest.json")
    assert out["entry"] and out["entry"]["url"].endswith(".pth") and out["cfg_url"] == out["entry"]["url"]
    assert out["alias"] is True
    assert out["config"] == str(site / "zoo_recipes" / "configs" / "cls_fashion_mnist.yaml")
    assert "ships with the zoo's source repository" in out["data_error"]
    assert sorted(out["helps"]) == sorted(SCRIPTS)
    for name, (code, text) in out["helps"].items():
        assert code == 0, (name, text[-500:])
        assert f"usage: {name} " in text, (name, text[:500])
        assert sum(line.lstrip().startswith(name) for line in text.splitlines()) >= 2, f"{name}: no examples"

    onnx = tmp_path / "nat_nano.onnx"
    exp = subprocess.run([env_dir / "bin" / "zoo-export", "nat_nano", "--img-size", "32", "--static-size",
                          "--static-batch", "-o", str(onnx)], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert exp.returncode == 0, exp.stdout[-2000:] + exp.stderr[-2000:]
    assert onnx.is_file() and onnx.stat().st_size > 100_000
