"""Agent attention mixer of Agent-Swin, Agent-PVT and Agent-DeiT (LeapLabTHU/Agent-Attention).

One module serves the three official flavours; they differ only in the projection layout, the class token
and PVT's optional spatial reduction:

- Swin (``agent_swin.py``): ``qkv, proj, dwc`` + the six biases ``an_bias, na_bias, ah_bias, aw_bias,
  ha_bias, wa_bias`` (official keys under ``...attn.``).
- PVT (``agent_pvt.py``): ``q, kv, proj, dwc`` + the six biases (+ ``sr`` conv and ``norm`` when
  ``sr_ratio > 1``; the released configs use ``agent_sr_ratios='1111'``, i.e. none).
- DeiT (``agent_deit.py``): ``qkv, proj, dwc`` + the six biases + ``ac_bias, ca_bias`` (class token).

Bias shapes (``h`` heads, ``n = p²`` agents, training map ``H0×W0``, ``s`` = ``sr_ratio``):
``an_bias, na_bias: [h, n, 7, 7]``; ``ah_bias: [h, n, H0/s, 1]``; ``aw_bias: [h, n, 1, W0/s]``;
``ha_bias: [h, H0, 1, n]``; ``wa_bias: [h, 1, W0, n]``; DeiT ``ac_bias: [1, h, n, 1]``,
``ca_bias: [1, h, 1, n]``. Every parameter is at most rank 4, so ``model.to(memory_format=torch.channels_last)``
works; the official files hold ``ah/aw/ha/wa_bias`` with a leading 1 (rank 5), which
:func:`official_agent_bias` squeezes and loading (``load_state_dict``) accepts as well.

Semantics (official): the agents are the queries (before scaling) average-pooled to a ``p×p`` grid;
``agent_bias = interp(an_bias) + (ah_bias + aw_bias)`` on the agent→key logits and
``query_bias = interp(na_bias) + (ha_bias + wa_bias)`` on the query→agent logits, ``scale = head_dim^-0.5``;
a 3×3 depthwise conv of V (``dwc``, on the map) is added to the attention output before ``proj``.
DeiT: the class token is a query and a key but not pooled into the agents and gets no ``dwc``; its logits
use ``ac_bias`` (agent→cls) and ``ca_bias`` (cls→agent).

Other resolutions follow the official downstream code (``AgentAttention.forward`` in
``downstream/{detection,segmentation}/.../backbones/agent_{swin,pvt}.py``): attention is global over the
whole map of any size (no padding, no windows); ``an_bias``/``na_bias`` and the summed
``ah_bias + aw_bias`` / ``ha_bias + wa_bias`` are resized bilinearly (``align_corners=False``) to the
current map, and with a run-time agent grid ``agent_shape`` other than ``p×p`` (downstream
``downstream_agent_shape``) also bilinearly along the agent grid. At the training size the resize is the
identity, so the classification behaviour is reproduced exactly; parameters never change. (DeiT has no
official downstream code; its class-token biases follow the same rule along the agent grid.) Official
classification Agent-Swin runs agent blocks only with window = the whole stage map
(``min(window_size, map)``); that map is ``train_size`` here; windowed agent attention is not supported.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from .linear import Linear
from .mlp import linear_act

# the biases the official code stores as rank 5 ([1, ...]) and the zoo as rank 4
RANK5_BIASES = ("ah_bias", "aw_bias", "ha_bias", "wa_bias")


def official_agent_bias(t: torch.Tensor) -> torch.Tensor:
    """An ``ah/aw/ha/wa_bias`` in the zoo's rank-4 shape: the official ``[1, ...]`` rank-5 tensor squeezed,
    a rank-4 one unchanged."""
    return t[0] if t.dim() == 5 and t.shape[0] == 1 else t


def _resize(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of the last two dims of a 4-D tensor (official: F.interpolate(..., 'bilinear'))."""
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)


def resize_agent_bias(t: torch.Tensor, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """An ``ah/aw/ha/wa_bias`` resized to ``shape``: linear (``align_corners=False``) along every axis whose
    length differs, computed in float32. The one resize of these tables for another training size: loading
    a checkpoint into a model of another size (the converter) and :meth:`AgentAttention.set_train_size`."""
    for d, (a, b) in enumerate(zip(t.shape, shape)):
        if a != b:
            moved = t.movedim(d, -1)
            lead = moved.shape[:-1]
            r = F.interpolate(moved.reshape(1, -1, a).float(), size=b, mode="linear", align_corners=False)
            t = r.reshape(*lead, b).to(t.dtype).movedim(-1, d)
    return t


class AgentAttention(nn.Module):
    """Agent attention over a channels-last map ``[B, H, W, C] -> [B, H, W, C]`` (any H, W).

    Args:
        dim: channels C.
        num_heads: heads (must divide ``dim``).
        agent_num: agents the parameters were trained with; a perfect square ``p²`` (pooled ``p×p`` grid).
        train_size: map size (int or (h, w)) at which ``ah/aw/ha/wa`` biases are defined: Swin — the stage
            map at the training resolution (``min(window_size, map)``, e.g. 56/28/14/7 at 224); PVT — the
            stage map ``sqrt(num_patches)``; DeiT — ``img_size // patch_size``.
        qkv_layout: ``"qkv"`` (one Linear dim→3·dim, Swin/DeiT) or ``"q_kv"`` (``q`` and ``kv``, PVT).
        qkv_bias: bias of the q/k/v projections.
        sr_ratio: PVT spatial reduction of keys/values (``sr`` conv stride s + LayerNorm ``norm``; needs
            ``"q_kv"``); the official configs use 1.
        cls_token: DeiT flavour: one prefix (class) token, with ``ac_bias`` and ``ca_bias``.
        agent_shape: run-time agent grid (downstream ``downstream_agent_shape``), default ``(p, p)``.
        scale: logit scale, default ``head_dim ** -0.5`` (the official agent modules ignore ``qk_scale``).
        dwc_kernel: kernel of the depthwise conv on V (official 3; downstream ``kernel_size``).
        proj_drop: dropout after ``proj``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        agent_num: int = 49,
        train_size: int | tuple[int, int] = 14,
        qkv_layout: str = "qkv",
        qkv_bias: bool = True,
        sr_ratio: int = 1,
        cls_token: bool = False,
        agent_shape: int | tuple[int, int] | None = None,
        scale: float | None = None,
        dwc_kernel: int = 3,
        proj_drop: float = 0.0,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"AgentAttention: num_heads={num_heads} must divide dim={dim}; pick a divisor")
        p = int(round(agent_num**0.5)) if agent_num > 0 else 0
        if agent_num < 1 or p * p != agent_num:
            raise ValueError(
                f"AgentAttention: agent_num={agent_num} must be a perfect square (the agents are a p×p "
                f"pooled grid), e.g. 9, 16, 49"
            )
        if qkv_layout not in ("qkv", "q_kv"):
            raise ValueError(
                f"AgentAttention: qkv_layout must be 'qkv' (Swin/DeiT) or 'q_kv' (PVT), got {qkv_layout!r}"
            )
        if sr_ratio < 1:
            raise ValueError(f"AgentAttention: sr_ratio must be >= 1, got {sr_ratio}")
        if sr_ratio > 1 and (qkv_layout != "q_kv" or cls_token):
            raise ValueError(
                "AgentAttention: sr_ratio > 1 is PVT's spatial reduction; use it with qkv_layout='q_kv' and "
                "no class token"
            )
        if dwc_kernel < 1 or dwc_kernel % 2 == 0:
            raise ValueError(f"AgentAttention: dwc_kernel must be a positive odd int, got {dwc_kernel}")
        H0, W0 = ops.pair(train_size, name="AgentAttention: train_size")
        if H0 < sr_ratio or W0 < sr_ratio:
            raise ValueError(f"AgentAttention: train_size {(H0, W0)} is smaller than sr_ratio={sr_ratio}")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.agent_num = agent_num
        self.pool_size = p
        self.agent_shape = (p, p) if agent_shape is None else ops.pair(agent_shape, name="AgentAttention: agent_shape")
        self.train_size = (H0, W0)
        self.qkv_layout = qkv_layout
        self.sr_ratio = sr_ratio
        self.cls_token = cls_token
        self.scale = self.head_dim**-0.5 if scale is None else scale

        h, n, s = num_heads, agent_num, sr_ratio
        # parameters first, in the official order (an, na, ah, aw, ha, wa[, ac, ca]), then the submodules
        self.an_bias = nn.Parameter(torch.empty(h, n, 7, 7, **dd))
        self.na_bias = nn.Parameter(torch.empty(h, n, 7, 7, **dd))
        # the official [1, ...] rank-5 shapes without the leading 1: rank 4 at most, so channels_last works
        self.ah_bias = nn.Parameter(torch.empty(h, n, H0 // s, 1, **dd))
        self.aw_bias = nn.Parameter(torch.empty(h, n, 1, W0 // s, **dd))
        self.ha_bias = nn.Parameter(torch.empty(h, H0, 1, n, **dd))
        self.wa_bias = nn.Parameter(torch.empty(h, 1, W0, n, **dd))
        if cls_token:
            self.ac_bias = nn.Parameter(torch.empty(1, h, n, 1, **dd))
            self.ca_bias = nn.Parameter(torch.empty(1, h, 1, n, **dd))
        if qkv_layout == "qkv":
            self.qkv = Linear(dim, 3 * dim, bias=qkv_bias, **dd)
        else:
            self.q = Linear(dim, dim, bias=qkv_bias, **dd)
            self.kv = Linear(dim, 2 * dim, bias=qkv_bias, **dd)
        self.proj = Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio, **dd)
            self.norm = nn.LayerNorm(dim, **dd)
        self.dwc = nn.Conv2d(dim, dim, dwc_kernel, padding=dwc_kernel // 2, groups=dim, **dd)
        self.reset_bias_parameters()

    def reset_bias_parameters(self) -> None:
        """Official init of the agent biases: truncated normal, std 0.02."""
        for name in ("an_bias", "na_bias", "ah_bias", "aw_bias", "ha_bias", "wa_bias", "ac_bias", "ca_bias"):
            p = getattr(self, name, None)
            if p is not None:
                nn.init.trunc_normal_(p, std=0.02)

    def set_train_size(self, train_size: int | tuple[int, int]) -> None:
        """Make ``train_size`` the map the ``ah/aw/ha/wa`` biases are defined at (``set_input_size``): each is
        resized with :func:`resize_agent_bias`, as the converter resizes a checkpoint for a model built at
        that size; device, dtype and ``requires_grad`` are kept."""
        H, W = ops.pair(train_size, name="AgentAttention.set_train_size: train_size")
        s, h, n = self.sr_ratio, self.num_heads, self.agent_num
        if H < s or W < s:
            raise ValueError(f"AgentAttention.set_train_size: {(H, W)} is smaller than sr_ratio={s}")
        shapes = {"ah_bias": (h, n, H // s, 1), "aw_bias": (h, n, 1, W // s), "ha_bias": (h, H, 1, n),
                  "wa_bias": (h, 1, W, n)}
        for name, shape in shapes.items():
            old = getattr(self, name)
            if tuple(old.shape) != shape:
                with torch.no_grad():
                    new = resize_agent_bias(old.detach(), shape)
                setattr(self, name, nn.Parameter(new, requires_grad=old.requires_grad))
        self.train_size = (H, W)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        # official files and zoo files written before the rank-4 storage hold ah/aw/ha/wa_bias as [1, ...]
        for name in RANK5_BIASES:
            key = prefix + name
            if key in state_dict:
                state_dict[key] = official_agent_bias(state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _agent_resize(self, b: torch.Tensor) -> torch.Tensor:
        """``[h, p·p, N]`` → ``[h, a, N]`` resized along the agent grid to ``agent_shape`` (downstream)."""
        p = self.pool_size
        if self.agent_shape == (p, p):
            return b
        h, _, N = b.shape
        b = b.transpose(1, 2).reshape(h, N, p, p)
        b = _resize(b, self.agent_shape)
        return b.reshape(h, N, -1).transpose(1, 2)

    def position_biases(
        self, hw: tuple[int, int], kv_hw: tuple[int, int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The two additive biases for a ``hw`` map (keys/values on ``kv_hw``, default ``hw``).

        Returns ``agent_bias: [1, heads, a, P + Hk·Wk]`` and ``query_bias: [1, heads, P + H·W, a]`` (``a``
        agents of ``agent_shape``, ``P`` = 1 with the class token, its entries first).
        """
        h, n = self.num_heads, self.agent_num
        kv_hw = hw if kv_hw is None else kv_hw
        # agent -> key: interp(an_bias) + interp(ah_bias + aw_bias), both to the key map
        ab = _resize(self.an_bias, kv_hw) + _resize(self.ah_bias + self.aw_bias, kv_hw)
        ab = self._agent_resize(ab.reshape(h, n, -1))  # [h, a, Nk]
        # query -> agent: interp(na_bias) + interp(ha_bias + wa_bias), both to the query map
        hw_bias = (self.ha_bias + self.wa_bias).permute(0, 3, 1, 2)  # [h, n, H0, W0]
        qb = _resize(self.na_bias, hw) + _resize(hw_bias, hw)
        qb = self._agent_resize(qb.reshape(h, n, -1)).transpose(1, 2)  # [h, Nq, a]
        if self.cls_token:
            ac = self._agent_resize(self.ac_bias.reshape(h, n, 1))  # [h, a, 1]
            ca = self._agent_resize(self.ca_bias.reshape(h, n, 1)).transpose(1, 2)  # [h, 1, a]
            ab = torch.cat([ac, ab], dim=2)
            qb = torch.cat([ca, qb], dim=1)
        return ab.unsqueeze(0), qb.unsqueeze(0)

    def forward(self, x: torch.Tensor, prefix: torch.Tensor | None = None):
        """``x: [B, H, W, C]`` → ``[B, H, W, C]``; DeiT flavour: also ``prefix: [B, 1, C]`` (the class
        token), returns ``(x_out, prefix_out)``."""
        if x.dim() != 4 or x.shape[-1] != self.dim:
            raise ValueError(f"AgentAttention expects [B, H, W, C={self.dim}], got shape {tuple(x.shape)}")
        B, H, W, C = x.shape
        if self.cls_token:
            if prefix is None or prefix.dim() != 3 or prefix.shape[0] != B or prefix.shape[1:] != (1, C):
                got = None if prefix is None else tuple(prefix.shape)
                raise ValueError(f"AgentAttention(cls_token=True) needs prefix [B={B}, 1, C={C}], got {got}")
        elif prefix is not None:
            raise ValueError("AgentAttention: prefix tokens given, but the module has cls_token=False")
        s = self.sr_ratio
        if H < s or W < s:
            raise ValueError(f"AgentAttention: map {H}x{W} is smaller than sr_ratio={s}")
        P = 1 if self.cls_token else 0
        heads, dh = self.num_heads, self.head_dim
        tokens = x.reshape(B, H * W, C)
        if P:
            tokens = torch.cat([prefix, tokens], dim=1)
        N = tokens.shape[1]
        if self.qkv_layout == "qkv":
            q, k, v = linear_act(self.qkv, tokens).reshape(B, N, 3, C).unbind(2)
            Hk, Wk = H, W
        else:
            q = linear_act(self.q, tokens)
            if s > 1:
                red = self.sr(x.permute(0, 3, 1, 2))  # [B, C, H/s, W/s]
                Hk, Wk = red.shape[2], red.shape[3]
                kv_in = self.norm(red.flatten(2).transpose(1, 2))
            else:
                Hk, Wk = H, W
                kv_in = tokens
            k, v = linear_act(self.kv, kv_in).reshape(B, kv_in.shape[1], 2, C).unbind(2)
        # agents: the (unscaled) patch queries average-pooled to the agent grid
        agent = ops.adaptive_avg_pool2d_matmul(q[:, P:].reshape(B, H, W, C), self.agent_shape)

        def heads_first(t: torch.Tensor) -> torch.Tensor:  # [B, L, C] -> [B, heads, L, dh]
            return t.reshape(B, t.shape[1], heads, dh).transpose(1, 2)

        q, k, v = heads_first(q), heads_first(k), heads_first(v)
        agent = heads_first(agent.reshape(B, agent.shape[1] * agent.shape[2], C))  # not -1: ambiguous at B = 0
        agent_bias, query_bias = self.position_biases((H, W), (Hk, Wk))
        out = ops.agent_attention(
            q, k, v, agent, agent_bias.to(q.dtype), query_bias.to(q.dtype), scale=self.scale
        )  # [B, heads, N, dh]
        # an explicit copy, not a reshape-view: when torch.export traces the sdpa path with learnable biases
        # (ops.attention's _BiasedSDPA), traced strides differ from the decomposed graph's; a view fails
        out = out.transpose(1, 2).clone(memory_format=torch.contiguous_format).reshape(B, N, C)
        # depthwise conv of V on the map (patch tokens only), resized back to H×W after spatial reduction
        v_map = v[:, :, P:].transpose(1, 2).reshape(B, Hk, Wk, C).permute(0, 3, 1, 2)
        if s > 1:
            v_map = _resize(v_map, (H, W))
        local = self.dwc(v_map).permute(0, 2, 3, 1).reshape(B, H * W, C)
        out = torch.cat([out[:, :P], out[:, P:] + local], dim=1) if P else out + local
        out = self.proj_drop(linear_act(self.proj, out))
        if P:
            return out[:, P:].reshape(B, H, W, C), out[:, :P]
        return out.reshape(B, H, W, C)

    def forward_tokens(self, tokens: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """Token layout of ViT blocks: ``[B, P + H·W, C]`` → same (``P`` = 1 with the class token, first)."""
        P = 1 if self.cls_token else 0
        H, W = hw
        if tokens.dim() != 3 or tokens.shape[1] != P + H * W:
            raise ValueError(
                f"AgentAttention.forward_tokens: tokens must be [B, {P} + {H}·{W}, C], "
                f"got {tuple(tokens.shape)}"
            )
        x = tokens[:, P:].reshape(tokens.shape[0], H, W, tokens.shape[2])
        if not P:
            return self(x).reshape(tokens.shape)
        y, cls = self(x, tokens[:, :P])
        return torch.cat([cls, y.reshape(tokens.shape[0], H * W, y.shape[-1])], dim=1)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_heads={self.num_heads}, agent_num={self.agent_num}, "
            f"agent_shape={self.agent_shape}, train_size={self.train_size}, layout={self.qkv_layout}, "
            f"sr_ratio={self.sr_ratio}, cls_token={self.cls_token}"
        )
