"""Loading: files -> key -> unsealing -> patched model -> ONNX Runtime session."""
