"""Cross-scale embedding layer (CrossFormer's CEL): one stride, several kernel sizes, outputs concatenated.

Every conv has stride ``s`` and padding ``(k - s) // 2``, so all of them give ``floor(H / s)`` rows for any
``H >= s`` and each output pixel sees patches of several scales around the same centre. Channels are split
as in the official code: the i-th kernel (smallest first) gets ``out // 2**(i+1)`` channels and the last one
``out // 2**(n-1)``, e.g. 64 → 32/16/8/8 for kernels 4/8/16/32 and 2C → C/C for kernels 2/4.

Two official uses (cheerss/CrossFormer ``models/crossformer.py``):
- stem (``PatchEmbed``): NCHW image → convs (kernels 4/8/16/32, stride 4) → concat → ``norm`` (LayerNorm over
  the embedding, present when ``patch_norm=True``). Keys ``projs.{i}``, ``norm``.
- downsampler (``PatchMerging``): ``norm`` (LayerNorm over the *input* channels) → convs (kernels 2/4,
  stride 2) → concat to 2C. Keys ``reductions.{i}``, ``norm``.

The official classifier asserts the image size and even maps before merging; here any size works and
odd sizes follow the conv arithmetic (``floor(H / s)``), as the official detection backbone's stem does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn


def cross_scale_dims(out_chs: int, num_kernels: int) -> list[int]:
    """Official channel split: ``out // 2**(i+1)`` for kernel i < n-1, ``out // 2**(n-1)`` for the last."""
    if num_kernels < 1:
        raise ValueError("cross_scale_dims: need at least one kernel size")
    if out_chs % (2 ** (num_kernels - 1)):
        raise ValueError(
            f"cross_scale_dims: out_chs={out_chs} is not divisible by 2**{num_kernels - 1}, so the official "
            f"split over {num_kernels} kernels would not add up; pick out_chs divisible by "
            f"{2 ** (num_kernels - 1)}"
        )
    n = num_kernels
    return [out_chs // 2 ** (i + 1) if i < n - 1 else out_chs // 2 ** (n - 1) for i in range(n)]


class CrossScaleEmbedding(nn.Module):
    """Cross-scale embedding: ``mode="stem"`` ``[B, in_chs, H, W]`` or ``mode="merge"`` ``[B, H, W, in_chs]``
    → ``[B, H // s, W // s, out_chs]`` (channels-last).

    Args:
        in_chs: input channels (3 for the stem, C for a downsampler).
        out_chs: output channels (``embed_dim`` for the stem, ``2C`` for a downsampler).
        kernel_sizes: conv kernel sizes, smallest first (official stem ``(4, 8, 16, 32)``, merge ``(2, 4)``).
        stride: conv stride; default ``kernel_sizes[0]`` for the stem (official ``patch_size[0]``) and 2 for
            merge (official). Each kernel must be ``>= stride`` with ``k - stride`` even.
        mode: ``"stem"`` (NCHW input, norm after the convs over ``out_chs``; keys ``projs``) or ``"merge"``
            (channels-last input, norm before the convs over ``in_chs``; keys ``reductions``).
        norm: build the LayerNorm (official stem: ``patch_norm``; official merge: always).
        norm_layer: norm factory ``norm_layer(channels, device=..., dtype=...)``.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_sizes: Sequence[int] = (4, 8, 16, 32),
        stride: int | None = None,
        mode: str = "stem",
        norm: bool = True,
        norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        if mode not in ("stem", "merge"):
            raise ValueError(f"CrossScaleEmbedding: mode must be 'stem' or 'merge', got {mode!r}")
        kernel_sizes = [int(k) for k in kernel_sizes]
        if not kernel_sizes:
            raise ValueError("CrossScaleEmbedding: kernel_sizes is empty; pass e.g. (4, 8, 16, 32)")
        if stride is None:
            stride = kernel_sizes[0] if mode == "stem" else 2
        for k in kernel_sizes:
            if k < stride or (k - stride) % 2:
                raise ValueError(
                    f"CrossScaleEmbedding: kernel {k} with stride {stride} gives a different output size "
                    f"than the others; every kernel must be >= stride with (kernel - stride) even"
                )
        self.mode = mode
        self.in_chs = in_chs
        self.out_chs = out_chs
        self.kernel_sizes = tuple(kernel_sizes)
        self.stride = stride
        self.proj_name = "projs" if mode == "stem" else "reductions"
        dims = cross_scale_dims(out_chs, len(kernel_sizes))
        convs = nn.ModuleList(
            nn.Conv2d(in_chs, d, kernel_size=k, stride=stride, padding=(k - stride) // 2, **dd)
            for k, d in zip(kernel_sizes, dims)
        )
        self.add_module(self.proj_name, convs)
        if norm:
            self.norm = norm_layer(out_chs if mode == "stem" else in_chs, **dd)
        else:
            self.norm = None

    @property
    def convs(self) -> nn.ModuleList:
        """The convs, smallest kernel first (registered as ``projs`` or ``reductions``)."""
        return getattr(self, self.proj_name)

    @property
    def dims(self) -> list[int]:
        return [c.out_channels for c in self.convs]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"CrossScaleEmbedding: expected a 4-D input, got shape {tuple(x.shape)}")
        if self.mode == "stem":
            if x.shape[1] != self.in_chs:
                raise ValueError(
                    f"CrossScaleEmbedding(stem): expected [B, {self.in_chs}, H, W] (NCHW), "
                    f"got {tuple(x.shape)}"
                )
        else:
            if x.shape[-1] != self.in_chs:
                raise ValueError(
                    f"CrossScaleEmbedding(merge): expected [B, H, W, {self.in_chs}] (channels-last), "
                    f"got {tuple(x.shape)}"
                )
            if self.norm is not None:
                x = self.norm(x)
            x = x.permute(0, 3, 1, 2)
        H, W = x.shape[-2], x.shape[-1]
        if H < self.stride or W < self.stride:
            raise ValueError(
                f"CrossScaleEmbedding: map {H}x{W} is smaller than the stride {self.stride}; "
                f"feed at least {self.stride}x{self.stride}"
            )
        x = torch.cat([conv(x) for conv in self.convs], dim=1).permute(0, 2, 3, 1)
        if self.mode == "stem" and self.norm is not None:
            return self.norm(x)
        return x.contiguous()

    def extra_repr(self) -> str:
        return f"mode={self.mode}, kernel_sizes={self.kernel_sizes}, stride={self.stride}, dims={self.dims}"
