"""ONNX export of (patched) causal LMs: graphs, ONNX Runtime fusions, parity checks, generation, speed.

Pure torch / transformers / onnx / onnxruntime helpers (no prefect, no mlflow), used by ``tasks/export.py`` and the
``attnflow export-onnx`` / ``attnflow generate`` commands. Heavy imports (onnx, onnxruntime, onnxscript) happen
inside the functions that need them, so registry discovery stays cheap. See docs/onnx.md.
"""
