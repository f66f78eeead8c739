"""Performance benchmarks of onnx-selenc against plain ONNX Runtime and whole-file AES-GCM.

Run ``python -m benchmarks.run --help``. The paper reproduction (VGG19, DnCNN) lives with
its training and attacks in :mod:`samples.paper` (``python -m samples.paper.reproduce``).
"""
