"""DynaQuant math (rounding, quantizers, bit-width selector, quantized convolutions), model-agnostic."""

from .blocks import QuantConv2d, QuantConvTranspose2d, QuantizedConv
from .quantizer import (
    QUANTIZERS,
    LearnableQuantizer,
    MinMaxQuantizer,
    PAMSQuantizer,
    fake_quantize,
)
from .rounding import ROUNDINGS, dgm_round, dgm_surrogate, ste_round
from .selector import BitSelector, bits_loss, sample_probabilities
from .wrap import LayerPolicy, QuantPolicy, quantized_layers, wrap

__all__ = [
    "QUANTIZERS",
    "ROUNDINGS",
    "BitSelector",
    "LayerPolicy",
    "LearnableQuantizer",
    "MinMaxQuantizer",
    "PAMSQuantizer",
    "QuantConv2d",
    "QuantConvTranspose2d",
    "QuantPolicy",
    "QuantizedConv",
    "bits_loss",
    "dgm_round",
    "dgm_surrogate",
    "fake_quantize",
    "quantized_layers",
    "sample_probabilities",
    "ste_round",
    "wrap",
]
