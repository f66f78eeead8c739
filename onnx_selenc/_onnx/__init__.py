"""ONNX model handling below every stage: graph walk, tensors, model files, atomic outputs."""
