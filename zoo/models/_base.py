"""The one skeleton every hierarchical family is built on: stem → stages → norm → head.

A network is a :class:`NetCfg`: a stem, a list of :class:`StageCfg` (each a downsampler and a stack of
blocks) and a head. Stems, downsamplers and blocks are looked up by name in small registries that the family
modules fill (``@register_block("maxvit")``; ``@register_mixer("nat")`` for a block that is the pre-norm residual
:class:`~zoo.layers.Block` around a family's mixer), so a config may name any block for any stage and a hybrid is
one line. The skeleton gives every model timm's API: ``forward_features`` (channels-last ``[B, H, W, C]``,
``output_fmt = "NHWC"``), ``forward_head(pre_logits=...)``, ``forward_intermediates``,
``prune_intermediate_layers``, ``feature_info`` (strides 4, 8, 16, 32), ``reset_classifier``,
``set_grad_checkpointing``, ``group_matcher`` and ``no_weight_decay``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from timm.layers import ClassifierHead, ClNormMlpClassifierHead, get_device_dtype
from timm.models import checkpoint_seq
from timm.models._features import feature_take_indices  # (no public name in timm 1.0)
from torch import nn

from .. import ops
from ..layers import Block, DWConvPos
from ..ops._checks import NonFiniteError

# name -> builder. Builders take explicit keyword arguments (see the type aliases) plus device/dtype.
STEMS: dict[str, Callable[..., nn.Module]] = {}
DOWNSAMPLERS: dict[str, Callable[..., nn.Module]] = {}
BLOCKS: dict[str, Callable[..., nn.Module]] = {}


def _registrar(table: dict[str, Callable[..., nn.Module]], kind: str):
    def register(name: str):
        def deco(fn):
            if name in table and table[name] is not fn:
                raise ValueError(f"{kind} {name!r} is registered twice")
            table[name] = fn
            return fn

        return deco

    return register


register_stem = _registrar(STEMS, "stem")
"""``@register_stem(name)``: ``fn(in_chans, out_dim, *, device, dtype, **kw) -> module`` mapping ``[B, C, H, W]``
images to channels-last ``[B, H/4, W/4, out_dim]``."""
register_downsampler = _registrar(DOWNSAMPLERS, "downsampler")
"""``@register_downsampler(name)``: ``fn(in_dim, out_dim, *, device, dtype, **kw)`` mapping ``[B, H, W, C]`` to
``[B, ⌈H/2⌉, ⌈W/2⌉, out_dim]``."""
register_block = _registrar(BLOCKS, "block")
"""``@register_block(name)``: ``fn(dim, *, index, depth, stage, drop_path, device, dtype, **kw)`` → a module
``[B, H, W, C] -> [B, H, W, C]``; ``index`` is the block's position in its stage (alternating patterns)."""


@dataclass(frozen=True)
class BlockSite:
    """What a mixer builder (:func:`register_mixer`) knows of its block: block ``index`` of the ``depth`` blocks
    of stage ``stage``; ``drop``, the block's dropout (a mixer's output projection takes it too); ``dd``, the
    ``device``/``dtype`` keywords for its parameters."""

    index: int
    depth: int
    stage: int
    drop: float
    dd: dict[str, Any]


def mixer_block(
    make_mixer: Callable[..., nn.Module], dim: int, *, index: int, depth: int, stage: int, drop_path: float,
    mlp_ratio: float = 4.0, drop: float = 0.0, layer_scale: float | None = None, norm_eps: float = 1e-5,
    pos_kernel: int = 0, block: Callable[..., nn.Module] = Block, device=None, dtype=None, **mixer_kwargs,
) -> nn.Module:
    """The pre-norm residual ``block`` (:class:`~zoo.layers.Block`: keys ``pos``, ``norm1``, ``attn``, ``ls1``,
    ``norm2``, ``mlp.fc1/fc2``, ``ls2``) around the mixer ``make_mixer(dim, site, **mixer_kwargs)`` builds.

    The block's own settings: MLP width ``mlp_ratio · dim``, dropout ``drop`` (MLP, and the mixer through
    ``site.drop``), stochastic depth ``drop_path``, ``layer_scale`` (None: none), LayerNorm ``norm_eps``,
    ``pos_kernel`` (0: no ``pos`` term; else ``x + pos(x)`` first, a ``pos_kernel``² depthwise conv)."""
    dd = {"device": device, "dtype": dtype}
    mixer = make_mixer(dim, BlockSite(index, depth, stage, drop, dd), **mixer_kwargs)
    return block(
        dim, mixer, mlp_ratio=mlp_ratio, norm_layer=partial(nn.LayerNorm, eps=norm_eps), drop=drop,
        drop_path=drop_path, layer_scale=layer_scale, pos=DWConvPos(dim, pos_kernel, **dd) if pos_kernel else None,
        **dd,
    )


def register_mixer(name: str, **defaults):
    """``@register_mixer(name, **defaults)`` on ``fn(dim, site, **kw) -> mixer`` (``site``: a :class:`BlockSite`,
    the mixer ``[B, H, W, C] -> [B, H, W, C]``) registers block ``name``: :func:`mixer_block` around ``fn``'s
    mixer. A stage's ``block_kwargs`` are the block's settings (``mlp_ratio``, ``drop``, ``layer_scale``,
    ``norm_eps``, ``pos_kernel``; ``defaults``: the family's) and ``fn``'s keywords."""

    def deco(fn):
        register_block(name)(partial(mixer_block, fn, **defaults))
        return fn

    return deco


@dataclass(frozen=True)
class StageCfg:
    """One stage: optional downsampler to ``dim``, then ``depth`` blocks of kind ``block``.

    ``stride``: how much the stage shrinks the map, for ``feature_info`` (None: 2 with a downsampler, else 1);
    a stage whose blocks stride themselves (MaxViT's first MBConv) says so here."""

    depth: int
    dim: int
    block: str
    block_kwargs: dict[str, Any] = field(default_factory=dict)
    downsample: str | None = None
    downsample_kwargs: dict[str, Any] = field(default_factory=dict)
    stride: int | None = None


@dataclass(frozen=True)
class NetCfg:
    """A whole backbone. ``head``: ``"classifier"`` (pool → fc) or ``"norm_mlp"`` (pool → LN → fc+tanh → fc,
    as MaxViT); ``norm``: final norm on the last stage (``"layernorm"``, ``"batchnorm"`` or None);
    ``stem_stride``: the stem's output stride, for ``feature_info`` (None: 4)."""

    stem: str
    stages: tuple[StageCfg, ...]
    stem_kwargs: dict[str, Any] = field(default_factory=dict)
    norm: str | None = "layernorm"
    norm_eps: float = 1e-5
    head: str = "classifier"
    head_hidden_size: int | None = None
    drop_path_rate: float = 0.0
    no_weight_decay: tuple[str, ...] = ()  # parameter-name substrings excluded from weight decay
    min_input_size: int = 32
    stem_stride: int | None = None

    def replace(self, **kw) -> NetCfg:
        return dataclasses.replace(self, **kw)


def _make_norm(kind: str | None, dim: int, eps: float, dd: dict) -> nn.Module:
    if kind is None:
        return nn.Identity()
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=eps, **dd)
    if kind == "batchnorm":
        return ChannelsLastBatchNorm(dim, eps=eps, **dd)
    raise ValueError(f"unknown norm {kind!r}; choose 'layernorm', 'batchnorm' or None")


class ChannelsLastBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d applied to a channels-last map ``[B, H, W, C]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class Stage(nn.Module):
    """``downsample`` then ``blocks``, on channels-last maps."""

    def __init__(self, downsample: nn.Module, blocks: nn.Sequential):
        super().__init__()
        self.grad_checkpointing = False
        self.downsample = downsample
        self.blocks = blocks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


def check_image_batch(x: torch.Tensor, in_chans: int, min_size: int) -> None:
    """One clear error for each kind of bad image batch: rank, channels, size, NaN/Inf (with where)."""
    if ops.is_capturing():
        return
    if x.dim() != 4:
        raise ValueError(
            f"expected an image batch [B, {in_chans}, H, W], got a {x.dim()}-D tensor of shape {tuple(x.shape)}"
            + ("; add a batch dim with x.unsqueeze(0)" if x.dim() == 3 else "")
        )
    if x.shape[1] != in_chans:
        hint = " (channels-last input? permute to [B, C, H, W])" if x.shape[-1] == in_chans else ""
        raise ValueError(f"expected {in_chans} input channels, got {x.shape[1]} in shape {tuple(x.shape)}{hint}")
    if x.shape[2] < min_size or x.shape[3] < min_size:
        raise ValueError(f"input {x.shape[2]}x{x.shape[3]} is smaller than the minimum {min_size}x{min_size}")
    if x.device.type == "cpu" and x.is_floating_point():
        bad = ~torch.isfinite(x)
        if bool(bad.any()):
            b, c, i, j = (int(v) for v in bad.nonzero()[0])
            raise ValueError(
                f"input holds {int(bad.sum())} NaN/Inf values, the first at batch {b}, channel {c}, "
                f"pixel ({i}, {j}); clean the data before the model"
            )


def check_model_args(
    what: str, *, num_classes: int, in_chans: int, drop_rate: float, drop_path_rate: float
) -> None:
    """Reject constructor arguments no model can work with, at construction (not as a shape error or a NaN
    in the first training step): ``in_chans`` an int >= 1, ``num_classes`` an int >= 0 (0 = no classifier,
    features only), ``drop_rate`` and ``drop_path_rate`` in [0, 1) (at 1 every sample of a residual branch is
    dropped and the kept ones are scaled by 1/(1 - rate) = 1/0: NaN/Inf in training)."""
    for name, value, low in (("in_chans", in_chans, 1), ("num_classes", num_classes, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            hint = " (0 builds the model without a classifier)" if name == "num_classes" else ""
            raise ValueError(f"{what}: {name} must be an int >= {low}{hint}, got {value!r}")
    for name, value in (("drop_rate", drop_rate), ("drop_path_rate", drop_path_rate)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
            raise ValueError(
                f"{what}: {name} must be a probability in [0, 1), got {value!r} (typical: 0.0-0.5; at 1 every "
                "sample is dropped and the rest is scaled by 1/0)"
            )


def input_hw(what: str, img_size: Any, min_size: int = 32, square: bool = False) -> tuple[int, int]:
    """``img_size`` (an int or an ``(h, w)`` pair of ints) as ``(h, w)``, or one clear ValueError: not ints,
    smaller than ``min_size`` (the smallest input the model takes), or not square where ``square``."""
    seq = isinstance(img_size, (tuple, list))
    vals = list(img_size) if seq else [img_size]
    if (seq and len(vals) != 2) or any(isinstance(v, bool) or not isinstance(v, int) for v in vals):
        raise ValueError(f"{what}: img_size must be an int or an (h, w) pair of ints, got {img_size!r}")
    h, w = (vals * 2)[:2] if not seq else vals
    if min(h, w) < min_size:
        raise ValueError(f"{what}: img_size {(h, w)} is below the smallest input the model takes ({min_size} px)")
    if square and h != w:
        raise ValueError(f"{what}: img_size must be square (its position terms are square), got {(h, w)}")
    return h, w


def record_input_size(model: nn.Module, hw: tuple[int, int]) -> None:
    """Make ``hw`` the model's input size wherever timm reads one: ``pretrained_cfg`` / ``default_cfg``
    ``input_size`` and ``pool_size`` (what ``timm.data.resolve_model_data_config`` and timm's scripts use; a
    new dict, so no other model's cfg changes) and timm's model traits (the ``img_size`` a saved model is
    rebuilt with)."""
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict):
        cfg = dict(cfg)
        cfg["input_size"] = (cfg.get("input_size", (getattr(model, "in_chans", 3),))[0], *hw)
        if "pool_size" in cfg:  # the final feature grid: the last stage's reduction (16 for Agent-DeiT)
            info = getattr(model, "feature_info", None)
            stride = info[-1]["reduction"] if isinstance(info, list) and info else 32
            cfg["pool_size"] = (hw[0] // stride, hw[1] // stride)
        model.pretrained_cfg = model.default_cfg = cfg
    try:
        from timm.models._input import update_model_input_size  # timm >= 1.0.31
    except ImportError:
        return
    update_model_input_size(model, hw)


def current_input_size(model: nn.Module) -> tuple[int, int]:
    """The input size a model records: its ``img_size``, else its cfg's ``input_size``, else 224."""
    if getattr(model, "img_size", None) is not None:
        return tuple(model.img_size)
    size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size") or (3, 224, 224)
    return int(size[-2]), int(size[-1])


def _failing_layer(model: nn.Module, err: BaseException) -> tuple[str, nn.Module | None]:
    """The innermost submodule of ``model`` whose ``forward`` was running when ``err`` was raised (read from
    the traceback's frames: no hooks, nothing to pay while nothing fails)."""
    names = {id(m): n for n, m in model.named_modules()}
    found: tuple[str, nn.Module | None] = ("", None)
    tb = err.__traceback__
    while tb is not None:
        module = tb.tb_frame.f_locals.get("self")
        if isinstance(module, nn.Module) and id(module) in names and module is not model:
            found = (names[id(module)], module)
        tb = tb.tb_next
    return found


def explain_non_finite(model: nn.Module, err: NonFiniteError, x: torch.Tensor) -> NonFiniteError:
    """``err`` (NaN/Inf seen by an op inside ``model``) as a :class:`~zoo.ops._checks.NonFiniteError` that
    names the layer and the likely causes. ``x``: the model's input batch, which the stem already checked
    to be finite, so the data is not the cause; what is left is the weights, or an overflow."""
    name, module = _failing_layer(model, err)
    where = f"layer {name!r} ({type(module).__name__})" if module is not None else "a layer inside the model"
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):  # the stem checks on CPU only
        return NonFiniteError(f"the input batch holds NaN/Inf values; clean the data before the model ({err})",
                              op=err.op, input=err.input)
    bad = [n for n, t in [*model.named_parameters(), *model.named_buffers()]
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        few = ", ".join(bad[:5]) + (f", ... ({len(bad)} in all)" if len(bad) > 5 else "")
        causes = (
            f"the model's weights hold NaN/Inf ({few}): a diverged training step (lower the learning rate, clip "
            "gradients, check the loss) or a bad checkpoint; reload good weights"
        )
    else:
        big_name, big = max(
            ((n, float(p.detach().abs().max())) for n, p in model.named_parameters() if p.numel()),
            key=lambda item: item[1], default=("-", 0.0),
        )
        largest_input = float(x.detach().abs().max()) if x.numel() else 0.0
        dtypes = sorted({str(p.dtype).replace("torch.", "") for p in model.parameters()})
        causes = (
            "the weights are finite, so a value overflowed: the dtype's range (model in "
            f"{'/'.join(dtypes)}, input in {str(x.dtype).replace('torch.', '')}; float16 overflows above 65504, "
            "use float32 or bfloat16), large weights (largest |weight| "
            f"{big:.3g} in {big_name}: a bad setting such as a layer-scale or logit-scale init, or an unnormalized "
            f"checkpoint), or very large inputs (largest |input| {largest_input:.3g}; normalize the images)"
        )
    out = NonFiniteError(
        f"NaN/Inf reached {where} (computed there or in the layer before it), not from the data (the input "
        f"batch is finite): {err}. Likely causes: {causes}.",
        op=err.op, input=err.input,
    )
    out.located = True
    return out


class Backbone(nn.Module):
    """A hierarchical backbone built from a :class:`NetCfg`.

    Input ``[B, in_chans, H, W]`` of any size ≥ ``cfg.min_input_size``; features are channels-last
    (``forward_features`` → ``[B, H/32, W/32, num_features]``), intermediates NCHW as timm's convention.
    """

    output_fmt = "NHWC"

    def __init__(
        self,
        cfg: NetCfg,
        num_classes: int = 1000,
        in_chans: int = 3,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        drop_path_rate: float | None = None,
        img_size: int | tuple[int, int] | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.cfg = cfg
        # a caller's input size (recorded for timm; the model itself takes any size): see the img_size property
        self._img_size = None if img_size is None else input_hw(type(self).__name__, img_size, cfg.min_input_size)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.drop_rate = drop_rate
        dpr_total = cfg.drop_path_rate if drop_path_rate is None else drop_path_rate
        check_model_args(
            type(self).__name__, num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate,
            drop_path_rate=dpr_total,
        )
        depths = [s.depth for s in cfg.stages]
        # stochastic depth grows linearly over all blocks (computed in python: safe under the meta device)
        n = sum(depths)
        dpr = [dpr_total * i / max(n - 1, 1) for i in range(n)]

        self.stem = STEMS[cfg.stem](in_chans, cfg.stages[0].dim, **cfg.stem_kwargs, **dd)
        stages, feature_info = [], []
        in_dim, reduction, k = cfg.stages[0].dim, cfg.stem_stride or 4, 0
        for si, sc in enumerate(cfg.stages):
            if sc.downsample is not None:
                down = DOWNSAMPLERS[sc.downsample](in_dim, sc.dim, **sc.downsample_kwargs, **dd)
            else:
                down = nn.Identity()
            reduction *= sc.stride if sc.stride is not None else (1 if sc.downsample is None else 2)
            blocks = [
                BLOCKS[sc.block](
                    sc.dim, index=i, depth=sc.depth, stage=si, drop_path=dpr[k + i], **sc.block_kwargs, **dd
                )
                for i in range(sc.depth)
            ]
            k += sc.depth
            stages.append(Stage(down, nn.Sequential(*blocks)))
            feature_info.append(dict(num_chs=sc.dim, reduction=reduction, module=f"stages.{si}"))
            in_dim = sc.dim
        self.stages = nn.ModuleList(stages)
        self.feature_info = feature_info
        self.num_features = in_dim
        self.norm = _make_norm(cfg.norm, in_dim, cfg.norm_eps, dd)
        if cfg.head == "norm_mlp":  # keys norm, pre_logits.fc, fc: those of timm's NCHW NormMlpClassifierHead
            self.head = ClNormMlpClassifierHead(
                in_dim, num_classes, hidden_size=cfg.head_hidden_size, pool_type=global_pool, drop_rate=drop_rate,
                norm_layer=partial(nn.LayerNorm, eps=cfg.norm_eps), act_layer="tanh", input_fmt="NHWC", **dd,
            )
        elif cfg.head == "classifier":
            self.head = ClassifierHead(
                in_dim, num_classes, pool_type=global_pool, drop_rate=drop_rate, input_fmt="NHWC", **dd
            )
        else:
            raise ValueError(f"unknown head {cfg.head!r}; choose 'classifier' or 'norm_mlp'")
        self.head_hidden_size = self.head.num_features

    @property
    def img_size(self) -> tuple[int, int]:
        """The input size the model is built for: the caller's ``img_size`` or ``set_input_size``'s, else its
        pretrained cfg's (the tag's), else 224."""
        if self._img_size is not None:
            return self._img_size
        size = (getattr(self, "pretrained_cfg", None) or {}).get("input_size") or (3, 224, 224)
        return int(size[-2]), int(size[-1])

    # ----------------------------------------------------------------------------------------- timm API
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        keys = self.cfg.no_weight_decay
        return {n for n, _ in self.named_parameters() if any(k in n for k in keys)}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(
            stem=r"^stem",
            blocks=r"^stages\.(\d+)" if coarse else [
                (r"^stages\.(\d+)\.downsample", (0,)),
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                (r"^norm", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for s in self.stages:
            s.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        dd = get_device_dtype(self)
        self.num_classes = num_classes
        self.head.reset(num_classes, pool_type=global_pool, in_features=self.num_features, **dd)
        if global_pool is not None:
            self.global_pool = global_pool
        self.head_hidden_size = self.head.num_features

    def set_input_size(
        self, img_size: int | tuple[int, int] | None = None, window_size: int | tuple[int, int] | None = None
    ) -> None:
        """timm's ``set_input_size``: make ``img_size`` the model's input size. Every zoo model runs on any input
        >= 32 px whatever this says (timm's ``dynamic_img_size`` is always on); what changes is the recorded
        size (``pretrained_cfg['input_size']``, so ``resolve_model_data_config`` and timm's scripts use it,
        and timm's traits) and, in the families whose official higher-resolution models change a size-dependent
        setting, that setting, as ``create_model(name, img_size=...)`` builds it (:meth:`resized_cfg`); learned
        tables are resized as the family's converter resizes them. ``window_size``: families with a window
        (MaxViT) only. Calling it at the current size changes nothing."""
        what = f"{type(self).__name__}.set_input_size"
        hw = current_input_size(self) if img_size is None else input_hw(what, img_size, self.cfg.min_input_size)
        cfg = self.resized_cfg(hw, window_size)
        if cfg != self.cfg:
            self.apply_cfg(cfg)
            self.cfg = cfg
        self._img_size = hw
        record_input_size(self, hw)

    def resized_cfg(self, hw: tuple[int, int], window_size: int | tuple[int, int] | None = None) -> NetCfg:
        """The config of this model at input size ``hw`` (a family with size-dependent settings overrides
        it). The skeleton's blocks have none: the config is unchanged."""
        if window_size is not None:
            raise ValueError(f"{type(self).__name__}.set_input_size: this family has no window_size to set")
        return self.cfg

    def apply_cfg(self, cfg: NetCfg) -> None:
        """Change the modules in place to ``cfg`` (a :meth:`resized_cfg` of the current one)."""

    # -------------------------------------------------------------------------------------------- forward
    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        check_image_batch(x, self.in_chans, self.cfg.min_input_size)
        # Every stage works on channels-last maps; a channels-last image makes the stem's convolutions (and
        # every conv after it: MBConv, downsamplers) run in oneDNN's native NHWC layout and turns the
        # [B, C, H, W] <-> [B, H, W, C] permutes between convs and attention into views instead of copies
        # (timing: docs/bench_cpu.md). Values are unchanged.
        return self.stem(x.contiguous(memory_format=torch.channels_last))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` → channels-last ``[B, h, w, num_features]`` after the final norm."""
        images = x
        x = self.forward_stem(x)
        try:
            for stage in self.stages:
                x = stage(x)
        except NonFiniteError as err:
            if getattr(err, "located", False):
                raise
            raise explain_non_finite(self, err, images) from err
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=True) if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Stage outputs as NCHW (or NHWC) maps; ``norm`` applies the final norm to the last stage's output."""
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        intermediates = []
        images = x
        x = self.forward_stem(x)
        last = len(self.stages) - 1
        stages = self.stages if (torch.jit.is_scripting() or not stop_early) else self.stages[: max_index + 1]
        i = 0
        for i, stage in enumerate(stages):
            try:
                x = stage(x)
            except NonFiniteError as err:
                if getattr(err, "located", False):
                    raise
                raise explain_non_finite(self, err, images) from err
            if i in take_indices:
                y = self.norm(x) if (norm and i == last) else x
                intermediates.append(y.permute(0, 3, 1, 2).contiguous() if output_fmt == "NCHW" else y)
        if intermediates_only:
            return intermediates
        if i == last:
            x = self.norm(x)
        return x, intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        prune_end = max_index < len(self.stages) - 1
        self.stages = self.stages[: max_index + 1]
        if prune_norm or prune_end:
            self.norm = nn.Identity()
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
            if isinstance(self.head, ClNormMlpClassifierHead):
                self.head.reset(self.num_classes, reset_other=True, in_features=self.num_features)
        if prune_head or prune_end:
            self.reset_classifier(0, "")
        return take_indices


def build_backbone(
    variant: str,
    cfg: NetCfg,
    pretrained: bool = False,
    filter_fn: Callable[[dict, nn.Module], dict] | None = None,
    model_cls: type[nn.Module] | None = None,
    **kwargs,
) -> nn.Module:
    """timm's ``build_model_with_cfg`` for a zoo config: pretrained loading through ``filter_fn`` (the
    family's official-checkpoint converter) and ``features_only`` through ``forward_intermediates``."""
    from ._pretrained import build_zoo_model

    out_indices = kwargs.pop("out_indices", tuple(range(len(cfg.stages))))
    return build_zoo_model(
        model_cls or Backbone,
        variant,
        pretrained,
        filter_fn,
        cfg=cfg,
        feature_cfg=dict(feature_cls="getter", out_indices=out_indices),
        **kwargs,
    )
