"""Modules: token mixers, position biases, MLP/MBConv, stems, downsamplers and the generic block.

Every mixer maps channels-last maps ``[B, H, W, C]`` of any size to the same shape.
"""

from .block import Block
from .drop import DropPath, LayerScale, drop_path
from .mlp import Mlp, gelu_tanh, get_act_layer
from .partition_attention import PartitionAttention

__all__ = ["Block", "DropPath", "LayerScale", "Mlp", "PartitionAttention", "drop_path", "gelu_tanh", "get_act_layer"]
