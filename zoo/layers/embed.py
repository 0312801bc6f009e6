"""Stems (patch embeddings / conv tokenizers): images ``[B, 3, H, W]`` (NCHW) → maps ``[B, H', W', C]``.

* :class:`ConvBNStem` — BiFormer: conv3x3/2 → BN → GELU → conv3x3/2 → BN (stride 4, ``ceil`` sizes).
* :class:`ConvTokenizer` — NAT/DiNAT: conv3x3/2 → conv3x3/2 → LayerNorm (stride 4, ``ceil`` sizes).
* :class:`PatchEmbed` — Swin/PVT/DeiT: conv with kernel = stride = patch, optional LayerNorm.

Submodule names equal the official ones, so official keys map with a prefix change only.
Outputs are contiguous channels-last tensors.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.sizes import pair
from .conv import conv_norm_act
from .mlp import get_act_layer


def _check_image(name: str, x: torch.Tensor, in_chans: int) -> None:
    if x.dim() != 4 or x.shape[1] != in_chans:
        raise ValueError(
            f"{name}: expected an NCHW image batch [B, {in_chans}, H, W], got shape {tuple(x.shape)}"
        )


class _Seq(nn.Sequential):
    """Sequential with the official integer child names; slicing returns a plain ``nn.Sequential``."""

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            return nn.Sequential(OrderedDict(list(self._modules.items())[idx]))
        return super().__getitem__(idx)


class ConvBNStem(_Seq):
    """BiFormer stem: ``[B, in_chans, H, W] -> [B, ceil(ceil(H/2)/2), ceil(ceil(W/2)/2), embed_dim]``.

    ``0`` conv3x3 stride 2 pad 1 (bias) → ``1`` BatchNorm2d → ``2`` GELU → ``3`` conv3x3 stride 2 pad 1
    (bias) → ``4`` BatchNorm2d; ``hidden_dim`` defaults to ``embed_dim // 2``; BN eps 1e-5 (PyTorch default).
    Keys: ``0.weight, 0.bias, 1.{weight,bias,running_mean,running_var,num_batches_tracked}, 3.weight,
    3.bias, 4.{...}`` — official ``downsample_layers.0.*`` (rayleizhu/BiFormer models/biformer.py).
    The official optional ``pe`` layer (appended when ``pe`` is set; no released model uses it) is not built.
    """

    def __init__(
        self,
        in_chans: int = 3,
        embed_dim: int = 64,
        hidden_dim: int | None = None,
        act_layer: str | Callable[[], nn.Module] = "gelu",
        norm_layer: Callable[..., nn.Module] = nn.BatchNorm2d,
        device=None,
        dtype=None,
    ):
        dd = {"device": device, "dtype": dtype}
        hidden_dim = hidden_dim or embed_dim // 2
        super().__init__(
            nn.Conv2d(in_chans, hidden_dim, 3, stride=2, padding=1, **dd),
            norm_layer(hidden_dim, **dd),
            get_act_layer(act_layer)(),
            nn.Conv2d(hidden_dim, embed_dim, 3, stride=2, padding=1, **dd),
            norm_layer(embed_dim, **dd),
        )
        self.in_chans = in_chans
        self.embed_dim = embed_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_image("ConvBNStem", x, self.in_chans)
        x = conv_norm_act(self[0], self[1], x, self[2])  # eval CPU: BN folded, GELU fused (zoo.ops.conv2d)
        return conv_norm_act(self[3], self[4], x).permute(0, 2, 3, 1).contiguous()


class ConvTokenizer(nn.Module):
    """NAT/DiNAT stem: ``[B, in_chans, H, W] -> [B, ceil(ceil(H/2)/2), ceil(ceil(W/2)/2), embed_dim]``.

    ``proj`` = Sequential(conv3x3 stride 2 pad 1, conv3x3 stride 2 pad 1), both with bias and no activation
    in between, then ``norm`` (LayerNorm eps 1e-5 on channels; ``norm_layer=None`` → identity, no keys).
    ``hidden_dim`` defaults to ``embed_dim // 2``. Keys: ``proj.0.weight, proj.0.bias, proj.1.weight,
    proj.1.bias, norm.weight, norm.bias`` — official ``patch_embed.*`` (SHI-Labs NAT classification/nat.py).
    """

    def __init__(
        self,
        in_chans: int = 3,
        embed_dim: int = 64,
        hidden_dim: int | None = None,
        norm_layer: Callable[..., nn.Module] | None = nn.LayerNorm,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        hidden_dim = hidden_dim or embed_dim // 2
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        self.proj = nn.Sequential(
            nn.Conv2d(in_chans, hidden_dim, 3, stride=2, padding=1, **dd),
            nn.Conv2d(hidden_dim, embed_dim, 3, stride=2, padding=1, **dd),
        )
        self.norm = norm_layer(embed_dim, **dd) if norm_layer is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_image("ConvTokenizer", x, self.in_chans)
        return self.norm(self.proj(x).permute(0, 2, 3, 1)).contiguous()


class PatchEmbed(nn.Module):
    """Non-overlapping patch embedding: ``[B, in_chans, H, W] -> [B, H/p, W/p, embed_dim]``.

    ``proj`` conv with kernel = stride = ``patch_size`` (bias), then ``norm`` on channels (LayerNorm
    eps 1e-5 by default; ``norm_layer=None`` → identity, no keys). Keys: ``proj.weight, proj.bias``
    (+ ``norm.weight, norm.bias``).

    Sizes that are not a multiple of ``p``:

    * ``pad=True`` (default): zero-pad bottom/right to a multiple, output ``ceil(H/p)``. This is the official
      Swin downstream (detection/segmentation) PatchEmbed; the official classification PatchEmbeds of
      Agent-Swin and of DeiT (timm) assert the training size instead.
    * ``pad=False``: a plain strided conv that drops the last ``H mod p`` rows / ``W mod p`` columns,
      output ``floor(H/p)`` — what official Agent-PVT's ``PatchEmbed`` does (no assert). Use it for PVT.

    Official users: Agent-Swin ``patch_embed`` (p=4, LN), Agent-PVT ``patch_embed1`` (p=4, LN eps 1e-5 — not
    the blocks' 1e-6). (Agent-DeiT uses timm's own ``PatchEmbed`` as part of timm's ``VisionTransformer``.)
    """

    def __init__(
        self,
        in_chans: int = 3,
        embed_dim: int = 96,
        patch_size: int | tuple[int, int] = 4,
        norm_layer: Callable[..., nn.Module] | None = nn.LayerNorm,
        pad: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        self.patch_size = pair(patch_size)
        self.pad = pad
        self.proj = nn.Conv2d(in_chans, embed_dim, self.patch_size, stride=self.patch_size, **dd)
        self.norm = norm_layer(embed_dim, **dd) if norm_layer is not None else nn.Identity()

    def _embed(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """``x: [B, C_in, H, W]`` (NCHW) → ``[B, H', W', embed_dim]``."""
        ph, pw = self.patch_size
        H, W = x.shape[-2], x.shape[-1]
        if self.pad:
            x = F.pad(x, (0, (-W) % pw, 0, (-H) % ph))
        elif H < ph or W < pw:
            raise ValueError(
                f"{name}: map {H}x{W} is smaller than the patch {ph}x{pw} and pad=False; "
                f"use a larger input or pad=True"
            )
        return self.norm(self.proj(x).permute(0, 2, 3, 1)).contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_image("PatchEmbed", x, self.in_chans)
        return self._embed(x, "PatchEmbed")

    def extra_repr(self) -> str:
        return f"patch_size={self.patch_size}, pad={self.pad}"
