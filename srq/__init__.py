"""srq: post-training quantization of image super-resolution networks.

    import srq
    cfg = srq.config("2dquant", bits="w4a4", overrides=["dqc.iterations=50"])
    qmodel = srq.quantize(model, cfg, calib=lr_batches)
    srq.save(qmodel, "model_w4a4.srq"); qmodel = srq.load("model_w4a4.srq", model=MyNet())
    srq.export_onnx(qmodel, "model.onnx")      # QDQ int8 graph for ONNX Runtime (integer formats)
"""

__version__ = "0.1.0"

_API = {"config": "srq.api", "quantize": "srq.api", "save": "srq.api", "load": "srq.api",
        "MatMul": "srq.ops", "SrqError": "srq.errors", "Fitter": "srq.lit.fit",
        "export_onnx": "srq.deploy"}


def __getattr__(name: str):
    """The public API, imported on first use (``import srq`` stays light)."""
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'srq' has no attribute {name!r}")


__all__ = ["Fitter", "MatMul", "SrqError", "config", "export_onnx", "load", "quantize", "save",
           "__version__"]
