"""Tests of onnx_selenc/_encrypt."""
