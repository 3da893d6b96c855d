"""Frozen backbone -> ONNX -> TensorRT engine, with parity checks at each step.

Nothing heavy is imported here: ``lemo_edge.export.onnx`` needs torch, onnx and onnxruntime,
``lemo_edge.export.tensorrt`` imports TensorRT only when an engine is built or loaded.
"""

from lemo_edge.export.errors import EngineCacheError, ExportError

__all__ = ["EngineCacheError", "ExportError"]
