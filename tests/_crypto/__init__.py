"""Tests of onnx_selenc/_crypto."""
