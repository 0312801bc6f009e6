"""Pretrained weights: the manifest (``weights/manifest.json``), reading checkpoint files safely, and the
model builder every family goes through so that ``pretrained=True`` (official URL, or a local official
file via ``pretrained_cfg_overlay=dict(file=...)``) reads the file with ``weights_only=True``, checks its
sha256 when the manifest has one, runs the family's converter and loads strictly — all inside timm's
``build_model_with_cfg``, so classifier resets, ``in_chans`` adaptation and ``features_only`` work as usual.

Checkpoints that need pickled Python objects (e.g. an ``argparse.Namespace`` saved next to the weights) are
refused unless the caller opts in: ``ZOO_ALLOW_PICKLE=1`` or ``with zoo.models.allow_pickle():`` (only for
files you trust: unpickling runs code).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import re
import warnings
from collections.abc import Callable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..ops import pair
from ..resources import manifest_path

__all__ = [
    "MANIFEST_PATH",
    "allow_pickle",
    "architecture_facts",
    "build_zoo_model",
    "check_official_file_name",
    "check_weights_metadata",
    "file_metadata",
    "load_manifest",
    "manifest_entry",
    "read_checkpoint",
    "sha256_file",
    "weights_metadata",
]

# weights/manifest.json of the checkout, or the copy installed inside the package (zoo/weights/manifest.json)
MANIFEST_PATH = manifest_path()
_PICKLE_ENV = "ZOO_ALLOW_PICKLE"
_allow_pickle_depth = 0


@contextlib.contextmanager
def allow_pickle() -> Iterator[None]:
    """Let checkpoint reads inside this block fall back to full unpickling (trusted files only)."""
    global _allow_pickle_depth
    _allow_pickle_depth += 1
    try:
        yield
    finally:
        _allow_pickle_depth -= 1


def _pickle_allowed() -> bool:
    return _allow_pickle_depth > 0 or os.environ.get(_PICKLE_ENV, "") not in ("", "0", "false", "False")


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# what torch's weights_only unpickler says about a well-formed pickle that names a non-allowlisted object
_REFUSED_GLOBAL = re.compile(r"GLOBAL |add_safe_globals|allowlisted")


def _unreadable(path: Path, err: BaseException) -> ValueError:
    detail = " ".join(str(err).split())
    detail = detail[detail.find("WeightsUnpickler error:"):] if "WeightsUnpickler error:" in detail else detail
    return ValueError(
        f"{path} is unreadable as a checkpoint: not a torch/safetensors file, or truncated or corrupt "
        f"({type(err).__name__}: {detail[:200] or 'empty file'}). Check the file (size, download, copy); "
        "opting in to pickle does not help."
    )


def read_checkpoint(path: str | os.PathLike, allow_pickle: bool | None = None) -> dict[str, Any]:
    """The object stored in a checkpoint file (``.safetensors`` or a torch pickle), read with
    ``weights_only=True``. A file that needs pickled objects raises unless ``allow_pickle`` (default: the
    ``ZOO_ALLOW_PICKLE`` environment variable or an enclosing ``allow_pickle()`` block) is set (raises
    ``pickle.UnpicklingError``); a file that is no checkpoint at all (random bytes, truncated, empty) raises
    ``ValueError`` saying it is unreadable."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist or is not a file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except SafetensorError as err:  # random bytes, truncated, empty: the header does not parse
            raise _unreadable(path, err) from err
    try:
        # garbage bytes read as a legacy pickle can make torch warn about a "pickle protocol" the file never
        # had: such warnings are kept only when the file turns out readable
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not _REFUSED_GLOBAL.search(str(err)):  # garbage bytes, not a refused Python object
            raise _unreadable(path, err) from err
        allowed = _pickle_allowed() if allow_pickle is None else allow_pickle
        if not allowed:
            found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
            what = f" (e.g. {found.group(1)})" if found else ""
            raise pickle.UnpicklingError(
                f"{path} holds pickled Python objects besides tensors{what}, so weights_only=True refuses it. "
                f"If you trust the file, opt in with {_PICKLE_ENV}=1, "
                "`with zoo.models.allow_pickle():`, or `tools/convert.py --allow-pickle` (which writes a "
                "safetensors file that loads without pickle)."
            ) from err
        return torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, MemoryError):  # the file could not be read (permissions, I/O) or held: not its content
        raise
    except Exception as err:  # noqa: BLE001 - bytes that are no pickle make the unpickler fail in any way
        # (RuntimeError: not a zip; EOFError: truncated or empty; IndexError/KeyError/UnicodeDecodeError: opcodes
        # read from random bytes); none of them is a refused Python object, so pickle would not help either
        raise _unreadable(path, err) from err
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return ckpt


@lru_cache(maxsize=1)
def load_manifest() -> dict[str, dict[str, Any]]:
    """``{'<model>.<tag>': entry}`` from ``weights/manifest.json`` (shipped in the wheel; empty only when the
    file is missing from both the package and the checkout)."""
    if not MANIFEST_PATH.is_file():
        return {}
    entries = json.loads(MANIFEST_PATH.read_text())["weights"]
    return {e["name"]: e for e in entries}


def manifest_entry(architecture: str | None, tag: str | None) -> dict[str, Any] | None:
    """The manifest entry of ``architecture.tag`` (None if there is none)."""
    if not architecture or not tag:
        return None
    return load_manifest().get(f"{architecture}.{tag}")


def _check_sha256(path: Path, entry: dict[str, Any] | None, downloaded: bool) -> None:
    """Compare the file with the manifest's sha256 when the manifest has one. A local file is checked when
    its name is the manifest's file name (a differently named local file is the user's own weights)."""
    if not entry or not entry.get("sha256"):
        return
    if not downloaded and path.name != entry.get("file"):
        return
    got = sha256_file(path)
    if got != entry["sha256"]:
        raise ValueError(
            f"sha256 of {path} is {got}, but weights/manifest.json expects {entry['sha256']} for "
            f"{entry['name']}: the file is corrupt or not the official release; delete it and download again"
        )


def _fetch(cfg: dict[str, Any], entry: dict[str, Any] | None) -> tuple[Path, bool]:
    """Local path of the weights for a resolved pretrained cfg and whether it was downloaded."""
    if cfg.get("file"):
        path = Path(cfg["file"])
        if path.is_dir():  # timm's "local-dir:<folder>" (the save_for_hf layout): the weights file inside it
            return _weights_in_folder(path), False
        return path, False
    url = cfg.get("url")
    name = f"{cfg.get('architecture')}.{cfg.get('tag')}"
    if entry and entry.get("download") == "manual":
        raise RuntimeError(
            f"the official weights of {name} are hosted at {url}, which has no direct download link; download "
            f"the file by hand and pass pretrained_cfg_overlay=dict(file='<path>') (the converter runs on it)"
        )
    # timm's download cache (<torch hub dir>/checkpoints), under the manifest's file name (or <model>.<tag>.pth):
    # several hosts end every URL alike (OneDrive '.../root/content', Tsinghua '.../?dl=1'), which would make
    # different weights share one file.
    filename = (entry or {}).get("file") or f"{name}.pth"
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if not cached.is_file():
        _require_network(cfg, url, cached)
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(cached), progress=True)
    return cached, True


# file names timm's save_for_hf writes and its local-dir / hf-hub loaders read, safest first
_FOLDER_WEIGHTS = ("model.safetensors", "open_clip_model.safetensors", "pytorch_model.bin")


def _weights_in_folder(folder: Path) -> Path:
    """The weights file of a model folder in timm's ``save_for_hf`` layout (``config.json`` + weights)."""
    for name in _FOLDER_WEIGHTS:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(
        f"{folder} holds no weights file ({', '.join(_FOLDER_WEIGHTS)}); a model folder is written by "
        f"`python tools/save_timm.py <run.ckpt> --out {folder}` or timm.models.save_for_hf"
    )


_OFFLINE_ENV = ("HF_HUB_OFFLINE", "ZOO_OFFLINE")
_PROBE_TIMEOUT_S = 3.0


def _env_offline() -> str | None:
    """The name of the set offline switch (``HF_HUB_OFFLINE=1``, ``ZOO_OFFLINE=1``), or None."""
    for var in _OFFLINE_ENV:
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return var
    return None


def _reachable(host: str, port: int = 443, timeout: float = _PROBE_TIMEOUT_S) -> str | None:
    """None when a TCP connection to ``host:port`` opens within ``timeout`` s, else why not. Name lookup
    and connect run in a daemon thread, so a resolver that hangs cannot hold the caller longer either."""
    import socket
    import threading

    result: list[str | None] = [f"no answer within {timeout:g} s"]

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result[0] = None
        except OSError as err:
            result[0] = f"{type(err).__name__}: {err}"

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return result[0]


def _require_network(cfg: dict[str, Any], url: str, cache: Path | str) -> None:
    """Fail fast, before any download attempt, when the weights are not cached and the network is off
    (``HF_HUB_OFFLINE``/``ZOO_OFFLINE``) or the host does not answer within a few seconds — instead of a bare
    URLError or a minute of retries. The message names the tag, the URL and the local route."""
    from urllib.parse import urlparse

    why = _env_offline()
    if why:
        why = f"{why} is set"
    elif any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        why = None  # behind a proxy a direct probe says nothing: let the download try
    else:
        host = urlparse(url).hostname or ""
        failed = _reachable(host) if host else "the URL has no host"
        why = f"{host or url} is not reachable ({failed})" if failed else None
    if why is None:
        return
    arch = cfg.get("architecture")
    raise ConnectionError(
        f"pretrained=True for {arch}.{cfg.get('tag')} needs {url}, which is not in the cache ({cache}), but "
        f"{why}. Without network: fetch the official file elsewhere and pass it, "
        f"timm.create_model('{arch}', pretrained=True, pretrained_cfg_overlay=dict(file='<path>')) (converted on "
        f"load), or convert it once, python tools/convert.py <path> --model {arch} --out {arch}.safetensors, and "
        f"pass the .safetensors file the same way."
    )


def _hf_cached(repo_id: str) -> str | None:
    """The cached weights file of a Hugging Face hub repo (timm's file names), or None."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for filename in ("model.safetensors", "open_clip_model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(repo_id, filename)
        if isinstance(found, str):
            return found
    return None


# ---------------------------------------------------------------------------------- which model a file is for
_TRAINING_ONLY = ("drop", "no_weight_decay", "min_input_size")  # config entries that do not change the weights
# bookkeeping for feature_info (the strides themselves are the stem's, downsamplers' and blocks' own): facts
# of files written before these entries existed stay equal
_REPORTING_ONLY = ("stride",)


def architecture_facts(model: nn.Module) -> dict[str, Any]:
    """The structure of ``model`` that its state dict keys and shapes do not show, flat ``{path: value}``:
    for a :class:`~zoo.models.Backbone` every entry of its ``NetCfg`` (e.g. ``stages.0.block_kwargs.dilations``,
    the one difference between NAT and DiNAT of a size) except training-only ones (drop rates) and the
    ``feature_info`` strides; for other
    models their class name."""
    import dataclasses

    cfg = getattr(model, "cfg", None)
    if not dataclasses.is_dataclass(cfg):
        return {"class": type(model).__name__}
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        elif isinstance(value, (list, tuple)) and any(isinstance(v, dict) for v in value):
            for i, item in enumerate(value):
                walk(f"{prefix}.{i}", item)
        elif not any(word in prefix.rsplit(".", 1)[-1] for word in _TRAINING_ONLY + _REPORTING_ONLY):
            flat[prefix] = json.loads(json.dumps(value, default=str))  # tuples -> lists, as read back

    walk("", dataclasses.asdict(cfg))
    return flat


def weights_metadata(model: nn.Module, model_name: str, **extra: str) -> dict[str, str]:
    """What the zoo stores next to every weights file it writes (safetensors metadata; a torch checkpoint
    keeps it under ``"zoo_metadata"``): the registered model name (without a pretrained tag) and its
    :func:`architecture_facts` as JSON. :func:`check_weights_metadata` reads it back on load."""
    return {
        "format": "zoo",
        "model": model_name.split(".")[0],
        "architecture": json.dumps(architecture_facts(model), sort_keys=True),
        **extra,
    }


def file_metadata(path: str | os.PathLike, checkpoint: Any = None) -> dict[str, str] | None:
    """The zoo metadata of a weights file: a safetensors file's metadata, or a torch checkpoint's
    ``"zoo_metadata"`` entry (pass the loaded ``checkpoint`` to avoid reading it twice); None if none."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or None
    meta = checkpoint.get("zoo_metadata") if isinstance(checkpoint, dict) else None
    return dict(meta) if isinstance(meta, dict) else None


def check_weights_metadata(
    meta: dict[str, str] | None, model_name: str, model: nn.Module | None = None, source: str = "the file"
) -> None:
    """Refuse weights written for another model: ``meta`` (from :func:`file_metadata`) names a different
    model than ``model_name``, or (given ``model``) its architecture facts differ from the model's (e.g. DiNAT
    dilations in a NAT model: same keys, same shapes, different logits). No metadata: nothing to check."""
    if not meta or not meta.get("model"):
        return
    want, have = model_name.split(".")[0], meta["model"].split(".")[0]
    diffs: list[str] = []
    if model is not None and meta.get("architecture"):
        theirs, ours = json.loads(meta["architecture"]), architecture_facts(model)
        diffs = [f"{k}: file {theirs.get(k, '-')} vs model {ours.get(k, '-')}"
                 for k in sorted(set(theirs) | set(ours)) if theirs.get(k) != ours.get(k)]
    if have == want and not diffs:
        return
    shown = "; ".join(diffs[:4]) + (f"; ... ({len(diffs)} in all)" if len(diffs) > 4 else "")
    if have != want:
        raise ValueError(
            f"{source} holds weights of {have} (its metadata), not {want}"
            + (f" (they differ in what the keys do not show: {shown})" if shown else "")
            + f"; create timm.create_model('{have}') for it, or pass the {want} weights"
        )
    raise ValueError(
        f"{source} holds weights of {have} built with other settings than this model ({shown}); create the "
        "model with the file's settings"
    )


def check_official_file_name(path: str | os.PathLike, model_name: str) -> None:
    """Refuse an official release file (known by its name in weights/manifest.json) given to another model,
    e.g. ``dinat_mini_in1k_224.pth`` for ``nat_mini``. Names the manifest knows for several models pass."""
    name, want = Path(path).name, model_name.split(".")[0]
    owners = sorted({e["model"] for e in load_manifest().values() if e.get("file") == name})
    if owners and want not in owners:
        raise ValueError(
            f"{name} is the official release file of {', '.join(owners)} (weights/manifest.json), not of {want}; "
            f"create timm.create_model('{owners[0]}') for it (if the file really holds {want} weights, rename it)"
        )


def _convert_or_pass(checkpoint: dict, model: nn.Module | None, converter: Callable | None) -> dict:
    """A checkpoint already in the zoo layout (e.g. written by tools/convert.py) passes as is; anything else
    goes through the family's converter (which names every key it cannot map)."""
    from ._convert import unwrap_state_dict

    state_dict = unwrap_state_dict(checkpoint)
    if converter is None or (model is not None and set(state_dict) == set(model.state_dict())):
        return state_dict
    return converter(checkpoint, model)


# A tiny placeholder state dict: it makes timm take its 'state_dict' branch (no second download or read),
# and the filter function below swaps in the converted official weights.
_PRELOADED = "__zoo_preloaded__"


def _rebuilt_as_saved(kwargs: dict[str, Any]) -> bool:
    """Whether ``img_size`` comes from a saved model folder's ``model_args`` (timm passes them on as
    ``pretrained_model_args``; ``recipes.checkpoint.save_timm_folder`` writes them): the network is rebuilt at the
    size it was built for, while the folder's ``pretrained_cfg`` keeps the input size it was trained and
    evaluated at (a model built at 224 and trained at 64 px), so that size is not overwritten."""
    saved = (kwargs.get("pretrained_model_args") or {}).get("img_size")
    if saved is None:
        return False
    return pair(saved) == pair(kwargs["img_size"])


def build_zoo_model(
    model_cls: Callable[..., nn.Module],
    variant: str,
    pretrained: bool,
    filter_fn: Callable[[dict, nn.Module], dict] | None,
    **kwargs,
) -> nn.Module:
    """timm's ``build_model_with_cfg`` with the zoo's pretrained handling (see the module docstring).

    Weights from the Hugging Face hub (``hf_hub_id``, e.g. MaxViT's timm weights) go through timm's own
    loader (safetensors, no pickle) and the same ``filter_fn``.
    """
    from timm.models import build_model_with_cfg, resolve_pretrained_cfg

    if pretrained:
        overlay = kwargs.get("pretrained_cfg_overlay")
        base = kwargs.get("pretrained_cfg")
        cfg = resolve_pretrained_cfg(variant, pretrained_cfg=base, pretrained_cfg_overlay=overlay)
        cfg = cfg.to_dict()
        has_file_or_url = cfg.get("file") or (cfg.get("url") and not cfg.get("hf_hub_id"))
        hub_id = cfg.get("hf_hub_id")
        if not cfg.get("state_dict") and not cfg.get("file") and hub_id and not _hf_cached(hub_id):
            _require_network(cfg, f"https://huggingface.co/{hub_id}", f"the Hugging Face hub cache of {hub_id}")
        if not cfg.get("state_dict") and has_file_or_url:
            entry = manifest_entry(cfg.get("architecture"), cfg.get("tag"))
            path, downloaded = _fetch(cfg, entry)
            _check_sha256(path, entry, downloaded)
            check_official_file_name(path, variant)
            checkpoint = read_checkpoint(path)
            meta = file_metadata(path, checkpoint)
            converter = filter_fn

            def filter_fn(state_dict: dict, model: nn.Module | None = None) -> dict:  # noqa: F811
                check_weights_metadata(meta, variant, model, source=str(path))
                return _convert_or_pass(checkpoint, model, converter)

            overlay = dict(kwargs.get("pretrained_cfg_overlay") or {})
            overlay["state_dict"] = {_PRELOADED: torch.zeros(())}
            kwargs["pretrained_cfg_overlay"] = overlay
    model = build_model_with_cfg(model_cls, variant, pretrained, pretrained_filter_fn=filter_fn, **kwargs)
    for module in (model, getattr(model, "model", None)):
        cfg = getattr(module, "pretrained_cfg", None)
        if isinstance(cfg, dict):
            cfg.pop("state_dict", None)  # don't keep the placeholder (or a user's tensors) in the config
            if kwargs.get("img_size") is not None and not _rebuilt_as_saved(kwargs):
                # the size it is built for, as set_input_size records it
                from ._base import input_hw, record_input_size

                record_input_size(module, input_hw(variant, kwargs["img_size"]))
    return model
