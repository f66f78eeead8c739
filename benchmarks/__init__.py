"""Performance benchmarks of onnx-selenc against plain ONNX Runtime and whole-file AES-GCM.

Run ``python -m benchmarks.run --help``.
"""
