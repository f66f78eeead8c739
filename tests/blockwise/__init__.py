"""Tests of onnx_selenc/blockwise."""
