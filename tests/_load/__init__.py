"""Tests of onnx_selenc/_load."""
