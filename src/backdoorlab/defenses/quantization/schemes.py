"""Weight quantizers: integer codes and fp16 scales per group, and the exact dequantization.

Each scheme maps a weight matrix ``W`` (``[out, in]``) to integer codes plus fp16 scales (and
zero points) per group of ``group_size`` consecutive input weights of one output row, and back.
Scales are rounded to fp16 *before* the codes are chosen, and :meth:`Scheme.dequantize` is the
only way weights are rebuilt, so the model's weights and the stored checkpoint agree bit for bit.

- ``int8``: symmetric absmax per output row, codes in [-127, 127] — the vector-wise weight
  quantization of LLM.int8() (Dettmers et al., "LLM.int8(): 8-bit Matrix Multiplication for
  Transformers at Scale", NeurIPS 2022, §3.1 eq. 1 and §3.2 "vector-wise quantization"; the
  weight is quantized per output row, i.e. per column of ``W`` in the paper's ``X W`` notation).
  Optionally input columns listed as outlier features stay in fp16 (§3.2, mixed-precision
  decomposition); the quantized part is then ``W`` with those columns zeroed.
- ``int4``: asymmetric round-to-nearest with a zero point per group, codes in [0, 15]; the RTN
  baseline of GPTQ (Frantar et al., ICLR 2023, §5) and AWQ (Lin et al., MLSys 2024, §4.1). As in
  GPTQ's quantizer, each group's range is widened to include 0 so that 0 is represented exactly.
- ``nf4``: 4-bit NormalFloat with per-block absmax (Dettmers et al., "QLoRA", NeurIPS 2023, §3
  "4-bit NormalFloat Quantization"); each weight becomes the nearest of the 16 code-book values
  times its block's absmax. bitsandbytes' blocks of 64 run over the flattened row-major weight,
  which, when ``group_size`` divides the input width, are exactly these per-row groups.

Codes of 4-bit schemes are packed two per byte (:func:`pack_nibbles`) when stored.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...errors import BackdoorLabError

#: The NF4 code book as published (QLoRA, Appendix E; bitsandbytes' NF4 table).
NF4_CODE_BOOK = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
)
FP16_SMALLEST = 2.0 ** -24  # smallest positive fp16 (subnormal): a scale never rounds to 0
FP16_LARGEST = 65504.0


def normal_float_code_book(bits: int = 4) -> torch.Tensor:
    """The k-bit NormalFloat code book from QLoRA's definition (§3), in float64.

    Quantiles of N(0, 1) for ``2^(k-1)`` positive and ``2^(k-1) - 1`` negative values (an
    asymmetric split, so 0 is a code exactly), merged with 0 and normalised to [-1, 1]. The
    outermost probability is the mean of ``1 - 1/(2·(2^k - 1))`` and ``1 - 1/(2·2^k)`` (the
    ``offset`` bitsandbytes uses, since the quantile of 1 is infinite). For k = 4 this agrees
    with :data:`NF4_CODE_BOOK` to about 2e-7.
    """
    levels = 2 ** bits
    offset = 0.5 * ((1 - 1 / (2 * (levels - 1))) + (1 - 1 / (2 * levels)))
    positive = torch.special.ndtri(torch.linspace(offset, 0.5, levels // 2 + 1, dtype=torch.float64)[:-1])
    negative = -torch.special.ndtri(torch.linspace(offset, 0.5, levels // 2, dtype=torch.float64)[:-1])
    values = torch.cat([negative, torch.zeros(1, dtype=torch.float64), positive]).sort().values
    return values / values.abs().max()


@dataclass
class QuantizedWeight:
    """One layer's quantized form: codes ``[out, in]`` (int8, or uint8 for 4-bit schemes), fp16
    ``scales`` (and ``zeros``) ``[out, groups]``, and the fp16 outlier columns kept unquantized."""

    codes: torch.Tensor
    scales: torch.Tensor
    group_size: int
    zeros: torch.Tensor | None = None
    outlier_columns: torch.Tensor | None = None  # int64 input-column indices
    outlier_weight: torch.Tensor | None = None  # fp16 [out, len(outlier_columns)]

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.codes.shape)  # type: ignore[return-value]

    def quantized_columns(self) -> torch.Tensor:
        """Indices of the input columns that hold codes (all but the outlier columns)."""
        keep = torch.ones(self.shape[1], dtype=torch.bool, device=self.codes.device)
        if self.outlier_columns is not None:
            keep[self.outlier_columns] = False
        return keep.nonzero().squeeze(1)


def fp16_scale(scale: torch.Tensor) -> torch.Tensor:
    """``scale`` rounded to fp16, kept within fp16's positive range."""
    return scale.clamp(FP16_SMALLEST, FP16_LARGEST).half()


def grouped(weight: torch.Tensor, group_size: int) -> torch.Tensor:
    """``[out, in]`` → ``[out, in // group_size, group_size]`` (``group_size`` must divide ``in``)."""
    rows, width = weight.shape
    if group_size < 1 or width % group_size:
        raise BackdoorLabError(f"group_size {group_size} does not divide the layer's input width {width}")
    return weight.reshape(rows, width // group_size, group_size)


@dataclass(frozen=True)
class Scheme:
    """A quantization scheme: ``bits`` per weight; ``per_row`` schemes ignore ``group_size``."""

    name: str
    bits: int
    per_row: bool = False

    @property
    def levels(self) -> int:
        return 2 ** self.bits

    def effective_group_size(self, width: int, group_size: int) -> int:
        return width if self.per_row else group_size

    def quantize(self, weight: torch.Tensor, group_size: int,
                 outlier_columns: torch.Tensor | None = None) -> QuantizedWeight:
        """Codes and fp16 scales of ``weight`` (any float dtype; computed in fp32)."""
        raise NotImplementedError

    def dequantize(self, q: QuantizedWeight) -> torch.Tensor:
        """The fp32 weight that ``q`` stands for (outlier columns from their fp16 values)."""
        weight = self._dequantize_codes(q)
        if q.outlier_columns is not None and q.outlier_weight is not None:
            weight[:, q.outlier_columns] = q.outlier_weight.float()
        return weight

    def _dequantize_codes(self, q: QuantizedWeight) -> torch.Tensor:
        raise NotImplementedError


class AbsmaxInt8(Scheme):
    """LLM.int8()'s vector-wise weight quantization: ``q = round(127 · w / absmax(row))``."""

    def quantize(self, weight: torch.Tensor, group_size: int,
                 outlier_columns: torch.Tensor | None = None) -> QuantizedWeight:
        weight = weight.float()
        outlier_weight = None
        if outlier_columns is not None and outlier_columns.numel():
            outlier_weight = weight[:, outlier_columns].half()
            weight = weight.clone()
            weight[:, outlier_columns] = 0
        else:
            outlier_columns = None
        qmax = 2 ** (self.bits - 1) - 1
        scales = fp16_scale(weight.abs().amax(dim=1, keepdim=True) / qmax)
        codes = torch.round(weight / scales.float()).clamp(-qmax, qmax).to(torch.int8)
        return QuantizedWeight(codes, scales, weight.shape[1], outlier_columns=outlier_columns,
                               outlier_weight=outlier_weight)

    def _dequantize_codes(self, q: QuantizedWeight) -> torch.Tensor:
        return q.codes.float() * q.scales.float()


class AsymmetricInt4(Scheme):
    """Round-to-nearest with a zero point per group: ``q = clamp(round(w / s) + z, 0, 15)``."""

    def quantize(self, weight: torch.Tensor, group_size: int,
                 outlier_columns: torch.Tensor | None = None) -> QuantizedWeight:
        groups = grouped(weight.float(), group_size)
        qmax = self.levels - 1
        low = groups.amin(dim=-1).clamp(max=0)
        high = groups.amax(dim=-1).clamp(min=0)
        scales = fp16_scale((high - low) / qmax)
        zeros = torch.round(-low / scales.float()).clamp(0, qmax).half()
        codes = (torch.round(groups / scales.float().unsqueeze(-1)) + zeros.float().unsqueeze(-1)).clamp(0, qmax)
        return QuantizedWeight(codes.to(torch.uint8).reshape(weight.shape), scales, group_size, zeros=zeros)

    def _dequantize_codes(self, q: QuantizedWeight) -> torch.Tensor:
        assert q.zeros is not None
        groups = grouped(q.codes.float(), q.group_size)
        weight = (groups - q.zeros.float().unsqueeze(-1)) * q.scales.float().unsqueeze(-1)
        return weight.reshape(q.shape)


class NormalFloat4(Scheme):
    """QLoRA's NF4: the nearest code-book value of ``w / absmax(block)``."""

    def code_book(self, device: torch.device | None = None) -> torch.Tensor:
        return torch.tensor(NF4_CODE_BOOK, dtype=torch.float32, device=device)

    def quantize(self, weight: torch.Tensor, group_size: int,
                 outlier_columns: torch.Tensor | None = None) -> QuantizedWeight:
        groups = grouped(weight.float(), group_size)
        book = self.code_book(weight.device)
        scales = fp16_scale(groups.abs().amax(dim=-1))
        normalised = groups / scales.float().unsqueeze(-1)
        codes = torch.bucketize(normalised, (book[1:] + book[:-1]) / 2)  # index of the nearest value
        return QuantizedWeight(codes.to(torch.uint8).reshape(weight.shape), scales, group_size)

    def _dequantize_codes(self, q: QuantizedWeight) -> torch.Tensor:
        book = self.code_book(q.codes.device)
        groups = grouped(book[q.codes.long()], q.group_size)
        return (groups * q.scales.float().unsqueeze(-1)).reshape(q.shape)


SCHEMES: dict[str, Scheme] = {
    "int8": AbsmaxInt8("int8", 8, per_row=True),
    "int4": AsymmetricInt4("int4", 4),
    "nf4": NormalFloat4("nf4", 4),
}


def get_scheme(name: str) -> Scheme:
    if name not in SCHEMES:
        raise BackdoorLabError(f"unknown quantization scheme {name!r}; choose one of {', '.join(SCHEMES)}")
    return SCHEMES[name]


# ---------------------------------------------------------------------------------- packing
def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """4-bit codes (uint8 in [0, 15]) packed two per byte, flattened row-major: the even-indexed
    code in the low nibble, the odd-indexed one in the high nibble (an odd count is padded with 0)."""
    flat = codes.reshape(-1).to(torch.uint8)
    if flat.numel() % 2:
        flat = torch.cat([flat, flat.new_zeros(1)])
    return flat[0::2] | (flat[1::2] << 4)


def unpack_nibbles(packed: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`pack_nibbles`: uint8 codes of ``shape``."""
    flat = torch.stack([packed & 0x0F, packed >> 4], dim=1).reshape(-1)
    count = 1
    for size in shape:
        count *= size
    return flat[:count].reshape(shape)


# --------------------------------------------------------------------------------- measuring
@torch.no_grad()
def levels_per_group(weight: torch.Tensor, group_size: int | None = None) -> int:
    """The largest number of distinct values in any group of ``group_size`` consecutive input
    weights of one output row of ``weight`` (``[out, in]``); ``None``: a whole row is one group."""
    if weight.dim() != 2:
        raise BackdoorLabError(f"levels_per_group needs a 2-D weight, got shape {tuple(weight.shape)}")
    width = weight.shape[1]
    size = width if group_size is None else group_size
    most = 0
    rows_per_chunk = max(1, 2 ** 22 // max(width, 1))
    for chunk in weight.detach().split(rows_per_chunk):
        values = grouped(chunk, size).reshape(-1, size).sort(dim=1).values
        distinct = 1 + (values[:, 1:] != values[:, :-1]).sum(dim=1)
        most = max(most, int(distinct.max()))
    return most
