"""Tests of onnx_selenc/_cli."""
