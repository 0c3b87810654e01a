"""Real weight quantization (int8 absmax per row, int4 RTN, NF4) as a post-training defense baseline."""

from .checkpoint import dequantize, load_quantized
from .defense import WeightQuantization
from .schemes import NF4_CODE_BOOK, SCHEMES, levels_per_group, normal_float_code_book

__all__ = ["NF4_CODE_BOOK", "SCHEMES", "WeightQuantization", "dequantize", "levels_per_group", "load_quantized",
           "normal_float_code_book"]
