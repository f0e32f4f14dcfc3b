"""srq: post-training quantization of image super-resolution networks."""

__version__ = "0.1.0"
