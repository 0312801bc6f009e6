"""Modules: token mixers, position biases, MLP/MBConv, stems, downsamplers and the generic block.

Every mixer maps channels-last maps ``[B, H, W, C]`` of any size to the same shape.
"""

from .agent import AgentAttention
from .attention import TokenAttention
from .block import Block
from .conv import AvgPool2dSame, BatchNormAct2d, Conv2dSame, create_avg_pool2d, create_conv2d
from .cross_scale import CrossScaleEmbedding, cross_scale_dims
from .downsample import ConvBNDownsample, ConvDownsampler, PatchEmbedDownsample, PatchMerging
from .drop import DropPath, LayerScale, drop_path
from .dynamic_pos_bias import DynamicPosBias
from .embed import ConvBNStem, ConvTokenizer, PatchEmbed
from .linear import Linear
from .mbconv import MaxViTStem, MBConv, PoolShortcut, SqueezeExcite, make_divisible
from .mlp import Mlp, gelu_tanh, get_act_layer
from .neighborhood import NeighborhoodAttention1D, NeighborhoodAttention2D
from .partition_attention import PartitionAttention
from .pos_bias import RelPosBias, resize_rel_pos_bias_table, resize_rel_pos_bias_tables
from .pos_embed import AbsPosEmbed, resample_abs_pos_embed
from .routed import AttentionLePE, BiLevelRoutingAttention, DWConvPos, LePE

__all__ = ["Block", "DropPath", "LayerScale", "Mlp", "PartitionAttention", "drop_path", "gelu_tanh", "get_act_layer"]
__all__ += ["CrossScaleEmbedding", "DynamicPosBias", "cross_scale_dims"]
__all__ += ["AgentAttention", "TokenAttention"]
__all__ += ["AvgPool2dSame", "BatchNormAct2d", "Conv2dSame", "create_avg_pool2d", "create_conv2d"]
__all__ += ["MaxViTStem", "MBConv", "PoolShortcut", "SqueezeExcite", "make_divisible"]
__all__ += ["RelPosBias", "resize_rel_pos_bias_table", "resize_rel_pos_bias_tables"]
__all__ += ["ConvBNStem", "ConvTokenizer", "PatchEmbed", "AbsPosEmbed", "resample_abs_pos_embed"]
__all__ += ["ConvBNDownsample", "ConvDownsampler", "PatchEmbedDownsample", "PatchMerging"]
__all__ += ["AttentionLePE", "BiLevelRoutingAttention", "DWConvPos", "LePE"]
__all__ += ["NeighborhoodAttention1D", "NeighborhoodAttention2D", "Linear"]
