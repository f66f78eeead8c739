"""Sample models, data fetchers and demos for onnx-selenc (not part of the installed package)."""
