"""dqsearch: hardware-aware mixed-precision quantization search for learned image compression."""

__version__ = "0.1.0"
