"""Tests of onnx_selenc/_select."""
