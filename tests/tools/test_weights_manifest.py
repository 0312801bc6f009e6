"""weights/manifest.json stays in step with the registered pretrained tags."""

from __future__ import annotations


def test_manifest_in_step_with_registry(load_tool):
    tool = load_tool("weights_manifest")
    problems = tool.check(tool.read_manifest(), tool.registry_entries())
    assert not problems, "\n".join(problems) + "\nrun `python tools/weights_manifest.py --write`"


def test_check_reports_drift(load_tool):
    tool = load_tool("weights_manifest")
    new = tool.registry_entries()
    old = {k: dict(v) for k, v in tool.read_manifest().items()}
    name = next(iter(old))
    old[name]["url"] = "https://example.invalid/x.pth"
    old[name]["sha256"] = "abc"
    del old[next(n for n in old if n != name)]
    problems = tool.check(old, new)
    assert any("url" in p and name in p for p in problems)
    assert any("sha256 'abc'" in p for p in problems)
    assert any(p.startswith("missing from the manifest") for p in problems)


def test_download_kind(load_tool):
    tool = load_tool("weights_manifest")
    assert tool._download_kind("https://drive.google.com/file/d/x/view", None) == "manual"
    assert tool._download_kind("https://shi-labs.com/projects/nat/checkpoints/CLS/nat_mini.pth", None) == "direct"
    assert tool._download_kind(None, "timm/maxvit_tiny_tf_224.in1k") == "hf-hub"

