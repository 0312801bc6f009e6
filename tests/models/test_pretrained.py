"""pretrained=True through timm: official files via pretrained_cfg_overlay, pickle opt-in, sha256 checks from
the manifest, manual-download hosts, zoo-layout files, unknown names."""

from __future__ import annotations

import argparse
import json
import pickle
import sys
from pathlib import Path

import pytest
import timm
import torch

import zoo
from zoo.models import _pretrained

PARITY = Path(__file__).resolve().parents[1] / "fixtures" / "parity"


def _case(name):
    sys.path.insert(0, str(PARITY))
    try:
        from official_init import load_case
    finally:
        sys.path.remove(str(PARITY))
    return load_case(PARITY / name)


@pytest.fixture(scope="module")
def nat_mini_file(tmp_path_factory):
    """The official NAT-Mini state dict (rebuilt from the fixture seed) saved as the release does."""
    case, official_sd, x, expected = _case("nat_mini")
    path = tmp_path_factory.mktemp("official") / "downloaded_by_hand.pth"
    torch.save({"model": official_sd}, path)
    return path, x, expected


def test_local_official_file_through_timm_matches_official_logits(nat_mini_file):
    path, x, expected = nat_mini_file
    model = timm.create_model("nat_mini.official_in1k", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), expected, rtol=1e-4, atol=1e-4)
    assert "state_dict" not in model.pretrained_cfg  # the loader leaves no tensors in the config


def test_pretrained_with_new_head_and_features_only(nat_mini_file):
    path, x, _ = nat_mini_file
    model = timm.create_model("nat_mini", pretrained=True, num_classes=7, pretrained_cfg_overlay=dict(file=str(path)))
    assert model.get_classifier().out_features == 7
    official = timm.create_model("nat_mini", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    torch.testing.assert_close(model.stem.state_dict(), official.stem.state_dict())
    overlay = dict(file=str(path))
    feats = timm.create_model("nat_mini", pretrained=True, features_only=True, pretrained_cfg_overlay=overlay)
    assert [f.shape[1] for f in feats(x[:1])] == [64, 128, 256, 512]


def test_pickled_checkpoint_needs_opt_in(nat_mini_file, tmp_path, monkeypatch):
    _, x, expected = nat_mini_file
    case, official_sd, _, _ = _case("nat_mini")
    path = tmp_path / "with_args.pth"
    torch.save({"model": official_sd, "args": argparse.Namespace(lr=1e-3)}, path)
    monkeypatch.delenv("ZOO_ALLOW_PICKLE", raising=False)
    with pytest.raises(pickle.UnpicklingError, match=r"argparse\.Namespace.*ZOO_ALLOW_PICKLE"):
        timm.create_model("nat_mini", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    with zoo.models.allow_pickle():
        model = timm.create_model("nat_mini", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), expected, rtol=1e-4, atol=1e-4)
    monkeypatch.setenv("ZOO_ALLOW_PICKLE", "1")
    timm.create_model("nat_mini", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


def test_random_bytes_are_called_unreadable_whatever_the_unpickler_trips_on(tmp_path, recwarn):
    """Bytes that are no pickle make torch's weights-only unpickler fail in many ways (UnpicklingError, and for
    about 8% of random 4 KiB files IndexError, KeyError or UnicodeDecodeError, sometimes after warning about a
    "pickle protocol"): every one is reported as an unreadable file, with no stray warning (a CI run once drew
    an IndexError from os.urandom)."""
    import random

    kinds = set()
    path = tmp_path / "x.ckpt"
    for seed in range(400):
        path.write_bytes(random.Random(seed).randbytes(4096))
        with pytest.raises(ValueError, match="unreadable as a checkpoint") as err:
            _pretrained.read_checkpoint(path)
        kinds.add(type(err.value.__cause__).__name__)
    # the seeds cover the failure kinds that escaped before
    assert {"UnpicklingError", "IndexError", "KeyError", "UnicodeDecodeError"} <= kinds, kinds
    assert not [w for w in recwarn if "protocol" in str(w.message)]


@pytest.mark.parametrize("kind", ["random", "truncated", "empty"])
def test_unreadable_safetensors_file_is_called_unreadable(tmp_path, kind):
    from safetensors.torch import save_file

    good = tmp_path / "good.safetensors"
    save_file({"w": torch.zeros(100)}, str(good))
    data = {"random": bytes(range(256)) * 16, "truncated": good.read_bytes()[:60], "empty": b""}[kind]
    path = tmp_path / "x.safetensors"
    path.write_bytes(data)
    with pytest.raises(ValueError, match="unreadable as a checkpoint"):
        _pretrained.read_checkpoint(path)


def test_a_file_that_cannot_be_read_is_not_called_corrupt(tmp_path, monkeypatch):
    """An I/O or memory failure while reading is raised as itself, not reported as a corrupt file."""
    path = tmp_path / "x.ckpt"
    torch.save({"w": torch.zeros(2)}, path)
    for err in (PermissionError(13, "Permission denied"), MemoryError()):
        def fail(*args, err=err, **kwargs):
            raise err

        monkeypatch.setattr(_pretrained.torch, "load", fail)
        with pytest.raises(type(err)):
            _pretrained.read_checkpoint(path)


def test_sha256_from_manifest_is_checked(nat_mini_file, tmp_path, monkeypatch):
    path, _, _ = nat_mini_file
    entry = dict(_pretrained.manifest_entry("nat_mini", "official_in1k"))
    named = tmp_path / entry["file"]
    named.write_bytes(path.read_bytes())
    manifest = {"nat_mini.official_in1k": {**entry, "sha256": "0" * 64}}
    monkeypatch.setattr(_pretrained, "load_manifest", lambda: manifest)
    with pytest.raises(ValueError, match="sha256 .* expects 0000"):
        timm.create_model("nat_mini.official_in1k", pretrained=True, pretrained_cfg_overlay=dict(file=str(named)))
    manifest["nat_mini.official_in1k"]["sha256"] = _pretrained.sha256_file(named)
    timm.create_model("nat_mini.official_in1k", pretrained=True, pretrained_cfg_overlay=dict(file=str(named)))
    # a file under another name is the user's own weights: not checked against the official hash
    manifest["nat_mini.official_in1k"]["sha256"] = "0" * 64
    timm.create_model("nat_mini.official_in1k", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


def test_manual_download_host_says_what_to_do():
    with pytest.raises(RuntimeError, match=r"no direct download link.*pretrained_cfg_overlay=dict\(file="):
        timm.create_model("crossformer_tiny.official_in1k", pretrained=True)


def test_zoo_layout_file_passes_through(nat_mini_file, tmp_path):
    from safetensors.torch import save_file

    path, x, expected = nat_mini_file
    model = timm.create_model("nat_mini", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    out = tmp_path / "nat_mini_zoo.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out))
    again = timm.create_model("nat_mini", pretrained=True, pretrained_cfg_overlay=dict(file=str(out)))
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(x), expected, rtol=1e-4, atol=1e-4)


def test_other_family_checkpoint_is_named(nat_mini_file):
    path, _, _ = nat_mini_file
    with pytest.raises(ValueError, match="nat"):
        timm.create_model("crossformer_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


def test_missing_file_is_clear():
    with pytest.raises(FileNotFoundError, match="does not exist"):
        timm.create_model("nat_mini", pretrained=True, pretrained_cfg_overlay=dict(file="/nonexistent/nat.pth"))


@pytest.mark.parametrize("bad", ["biformer_tinny", "crosformer_tiny", "maxvit_tiny_tf"])
def test_unknown_model_name_lists_close_names(bad):
    with pytest.raises(ValueError, match="unknown model .*close names: .*_tiny"):
        zoo.create_model(bad)


def test_manifest_entries_are_well_formed():
    doc = json.loads(_pretrained.MANIFEST_PATH.read_text())
    for entry in doc["weights"]:
        assert entry["download"] in ("direct", "manual", "hf-hub"), entry["name"]
        assert entry["sha256"] == "" or len(entry["sha256"]) == 64, entry["name"]
        module, _, fn = entry["converter"].partition(":")
        assert callable(getattr(sys.modules[module], fn)), entry["converter"]
        assert entry["top1"] is None or 60 < entry["top1"] < 95, entry["name"]


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """No cached weights anywhere: timm's download cache in a fresh TORCH_HOME, no Hugging Face hub file."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(_pretrained, "_hf_cached", lambda repo_id: None)


@pytest.mark.parametrize(
    ("name", "url"),
    [
        ("nat_mini.official_in1k", "https://shi-labs.com/projects/nat/checkpoints/CLS/nat_mini.pth"),
        ("maxvit_tiny.tf_in1k", "https://huggingface.co/timm/maxvit_tiny_tf_224.in1k"),
    ],
)
@pytest.mark.parametrize("offline", ["env", "unreachable"])
def test_offline_pretrained_fails_fast_naming_tag_url_and_local_route(name, url, offline, empty_caches, monkeypatch):
    """HF_HUB_OFFLINE set, or a host that does not answer (mocked: no test touches the network): one clear
    error within seconds, before timm's download (a bare URLError) or the hub client's retries start."""
    import time

    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr("torch.hub.download_url_to_file", no_download)
    monkeypatch.setattr("timm.models._builder.load_state_dict_from_hf", no_download)
    if offline == "env":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setattr(_pretrained, "_reachable", no_download)
        reason = "HF_HUB_OFFLINE is set"
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        for var in ("ZOO_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setattr(_pretrained, "_reachable", lambda host: "gaierror: no network")
        reason = "is not reachable (gaierror: no network)"
    start = time.monotonic()
    with pytest.raises(ConnectionError) as info:
        timm.create_model(name, pretrained=True)
    assert time.monotonic() - start < 5
    text = str(info.value)
    arch = name.split(".")[0]
    for part in (name, url, reason, "pretrained_cfg_overlay=dict(file=", f"tools/convert.py <path> --model {arch}"):
        assert part in text, part


def test_network_probe_is_bounded_by_its_timeout(monkeypatch):
    """A resolver or connect that hangs costs the probe's timeout, not the system's (minutes)."""
    import socket
    import time

    monkeypatch.setattr(socket, "create_connection", lambda *a, **kw: time.sleep(30))
    start = time.monotonic()
    assert _pretrained._reachable("example.invalid", timeout=0.3) == "no answer within 0.3 s"
    assert time.monotonic() - start < 2
    monkeypatch.setattr(socket, "create_connection", lambda *a, **kw: (_ for _ in ()).throw(OSError("down")))
    assert _pretrained._reachable("example.invalid", timeout=0.3) == "OSError: down"


@pytest.fixture(scope="module")
def dinat_nano_weights():
    """A DiNAT-nano state dict and its zoo metadata: the same keys and shapes as NAT-nano's."""
    model = timm.create_model("dinat_nano", num_classes=10)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    assert set(sd) == set(timm.create_model("nat_nano", num_classes=10).state_dict())
    return sd, _pretrained.weights_metadata(model, "dinat_nano")


def test_dinat_safetensors_file_into_nat_is_refused(dinat_nano_weights, tmp_path):
    from safetensors.torch import save_file

    sd, meta = dinat_nano_weights
    path = tmp_path / "weights.safetensors"
    save_file(sd, str(path), metadata=meta)
    overlay = dict(file=str(path))
    with pytest.raises(ValueError, match=r"weights of dinat_nano .*not nat_nano .*dilations: file \[1, 8\] vs model"):
        timm.create_model("nat_nano", pretrained=True, num_classes=10, pretrained_cfg_overlay=overlay)
    model = timm.create_model("dinat_nano", pretrained=True, num_classes=10, pretrained_cfg_overlay=overlay)
    body = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}  # timm resets a new head
    torch.testing.assert_close(body, {k: sd[k] for k in body})
    # metadata naming the right model but other structure (dilations the keys do not show) is refused too
    nat = timm.create_model("nat_nano", num_classes=10)
    with pytest.raises(ValueError, match="other settings than this model .*dilations: file"):
        _pretrained.check_weights_metadata({**meta, "model": "nat_nano"}, "nat_nano", nat)


def test_dinat_state_dict_with_metadata_into_nat_is_refused(dinat_nano_weights, tmp_path):
    """A torch checkpoint carries the metadata under "zoo_metadata": refused by the pretrained loader and by
    zoo.export.load_state_dict_file, loaded by the right model."""
    from zoo.export import build_model, load_state_dict_file

    sd, meta = dinat_nano_weights
    path = tmp_path / "weights.pth"
    torch.save({"state_dict": sd, "zoo_metadata": meta}, path)
    with pytest.raises(ValueError, match="weights of dinat_nano .*not nat_nano"):
        timm.create_model("nat_nano", pretrained=True, num_classes=10, pretrained_cfg_overlay=dict(file=str(path)))
    with pytest.raises(ValueError, match="weights of dinat_nano .*not nat_nano"):
        load_state_dict_file(path, model="nat_nano")
    with pytest.raises(ValueError, match="weights of dinat_nano .*not nat_nano"):
        build_model("nat_nano", checkpoint=path)
    assert set(load_state_dict_file(path, model="dinat_nano")) == set(sd)


def test_official_file_of_another_model_is_refused_by_its_manifest_name(tmp_path):
    path = tmp_path / "dinat_mini_in1k_224.pth"  # the DiNAT-Mini release file name (weights/manifest.json)
    torch.save({"model": {}}, path)
    with pytest.raises(ValueError, match="official release file of dinat_mini .*not of nat_mini"):
        timm.create_model("nat_mini", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


def test_download_lands_in_timms_cache_once(tmp_path, monkeypatch):
    """A tag's URL is downloaded (torch.hub) into timm's cache folder under <model>.<tag>.pth (or the manifest's
    file name) and read from there on the next call, without a second download."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(_pretrained, "manifest_entry", lambda arch, tag: None)
    monkeypatch.setattr(_pretrained, "_reachable", lambda host: None)
    for var in ("HF_HUB_OFFLINE", "ZOO_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    torch.manual_seed(0)
    src = timm.create_model("agent_deit_t")
    calls = []

    def fake_download(url, dst, *args, **kwargs):
        calls.append((url, dst))
        torch.save(src.state_dict(), dst)

    monkeypatch.setattr("torch.hub.download_url_to_file", fake_download)
    model = timm.create_model("agent_deit_t", pretrained=True)
    cached = tmp_path / "torch_home" / "hub" / "checkpoints" / "agent_deit_t.official_in1k.pth"
    assert calls == [(timm.get_pretrained_cfg("agent_deit_t.official_in1k").url, str(cached))]
    torch.testing.assert_close(model.state_dict()["pos_embed"], src.state_dict()["pos_embed"])
    timm.create_model("agent_deit_t", pretrained=True)
    assert len(calls) == 1
