"""Tests of onnx_selenc/_onnx."""
