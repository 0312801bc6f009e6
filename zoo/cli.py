"""The console scripts (``[project.scripts]`` in pyproject.toml): ``zoo-train``, ``zoo-export``, ``zoo-predict``,
``zoo-convert``, ``zoo-bench``, ``zoo-demo``, ``zoo-save-timm``.

Each runs the ``main(argv)`` of a tool in ``tools/`` (``python tools/<name>.py`` in a checkout; the wheel installs
that folder as the ``zoo_tools`` package). ``--help`` shows the tool's examples under the command's own name. A
missing optional dependency ends with the pip line of the extra that brings it (``zoo[train]``, ``zoo[export]``).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from ._extras import explain_missing

__all__ = ["bench", "convert", "demo", "export", "predict", "save_timm", "train"]

TRAIN_EXAMPLES = """\
Train, validate, test or predict with a Lightning recipe (LightningCLI; the subcommand comes first).

examples:
  zoo-train fit --config cls_fashion_mnist --model.model_name=nat_nano        # a shipped config, by name
  zoo-train fit --config cls_fashion_mnist --ckpt_path last                   # resume the run
  zoo-train test --config cls_fashion_mnist --ckpt_path best
  zoo-train fit --config my.yaml --trainer.max_epochs=5                       # your own config
  zoo-train fit --help                                                        # every option of fit

shipped configs (--config NAME, or a path): {configs}
"""

SAVE_TIMM_EXAMPLES = """
more examples:
  zoo-save-timm my_run/checkpoints/last.ckpt --out my_model/     # any classification recipe checkpoint
"""


def _tool(name: str) -> ModuleType:
    """The module of ``tools/<name>.py``: ``zoo_tools.<name>`` when installed, else the file of the checkout."""
    if importlib.util.find_spec("zoo_tools") is not None:
        return importlib.import_module(f"zoo_tools.{name}")
    path = Path(__file__).resolve().parents[1] / "tools" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"zoo_tools_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _recipes(required: bool) -> None:
    """Import the installed recipes (``zoo_recipes``), which makes the ``recipes.*`` names the tools, configs and
    checkpoints use resolve to it. ``required=False``: a missing [train] extra is left to the tool."""
    if importlib.util.find_spec("zoo_recipes") is None:
        return
    try:
        importlib.import_module("zoo_recipes")
    except ModuleNotFoundError:
        if required:
            raise


def _run(command: str, tool: str, argv: list[str] | None, needs_recipes: bool,
         call: Callable[[ModuleType, list[str]], object] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        _recipes(needs_recipes)
        module = _tool(tool)
        if module.__doc__:  # the examples in --help, under the name the user typed
            module.__doc__ = module.__doc__.replace(f"python tools/{tool}.py", command)
        result = call(module, argv) if call else module.main(argv)
    except ModuleNotFoundError as err:
        hint = explain_missing(err)
        if hint is None:
            raise
        print(f"{command}: error: {hint}", file=sys.stderr)
        return 1
    return result if isinstance(result, int) else 0


def _resolve_configs(argv: list[str]) -> list[str]:
    """``--config NAME`` that is not a file but a shipped recipe config -> its path."""
    from .resources import recipe_config

    out = list(argv)
    for i, arg in enumerate(out):
        key, eq, value = arg.partition("=")
        if key in ("--config", "-c") and not eq and i + 1 < len(out):
            j, value = i + 1, out[i + 1]
        elif key == "--config" and eq:
            j = i
        else:
            continue
        if not Path(value).exists():
            try:
                path = str(recipe_config(value))
            except FileNotFoundError:
                continue  # LightningCLI reports the missing file
            out[j] = path if j != i else f"--config={path}"
    return out


def _train(module: ModuleType, argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        from .resources import recipe_configs_dir

        configs = ", ".join(sorted(p.stem for p in recipe_configs_dir().glob("*.yaml")))
        print(TRAIN_EXAMPLES.format(configs=configs))
    ckpt_errors = []
    for mod, name in (("recipes.checkpoint", "NothingToResumeError"), ("recipes.common", "CheckpointWriteError")):
        ckpt_errors.append(getattr(importlib.import_module(mod), name))
    saved, sys.argv = sys.argv, [sys.argv[0], *_resolve_configs(argv)]  # LightningCLI reads sys.argv
    try:
        module.main(None)
    except tuple(ckpt_errors) as err:  # say what and what to do, not 40 frames (as tools/train.py does)
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        sys.argv = saved
    return 0


def train(argv: list[str] | None = None) -> int:
    """``zoo-train``: tools/train.py (LightningCLI over the recipes; ``--config`` also takes a shipped config's
    name)."""
    return _run("zoo-train", "train", argv, needs_recipes=True, call=_train)


def export(argv: list[str] | None = None) -> int:
    """``zoo-export``: tools/export.py (ONNX export, verified in onnxruntime)."""
    return _run("zoo-export", "export", argv, needs_recipes=False)


def predict(argv: list[str] | None = None) -> int:
    """``zoo-predict``: tools/predict.py (predictions.json and drawn images)."""
    return _run("zoo-predict", "predict", argv, needs_recipes=True)


def convert(argv: list[str] | None = None) -> int:
    """``zoo-convert``: tools/convert.py (an official checkpoint -> zoo safetensors)."""
    return _run("zoo-convert", "convert", argv, needs_recipes=False)


def bench(argv: list[str] | None = None) -> int:
    """``zoo-bench``: tools/bench_models.py (per-model throughput and memory, default vs reference path)."""
    return _run("zoo-bench", "bench_models", argv, needs_recipes=False)


def demo(argv: list[str] | None = None) -> int:
    """``zoo-demo``: tools/demo.py (the main jobs; the embedded data sets need a checkout)."""
    return _run("zoo-demo", "demo", argv, needs_recipes=True)


def _save_timm(module: ModuleType, argv: list[str]) -> int:
    if SAVE_TIMM_EXAMPLES not in (module.__doc__ or ""):  # --help: a second example under this command's name
        module.__doc__ = (module.__doc__ or "") + SAVE_TIMM_EXAMPLES
    return module.main(argv)


def save_timm(argv: list[str] | None = None) -> int:
    """``zoo-save-timm``: tools/save_timm.py (a classification recipe checkpoint -> a timm model folder that
    ``timm.create_model("local-dir:<folder>", pretrained=True)`` loads)."""
    return _run("zoo-save-timm", "save_timm", argv, needs_recipes=True, call=_save_timm)
