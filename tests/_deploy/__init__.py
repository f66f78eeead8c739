"""Tests of onnx_selenc/_deploy and onnx_selenc/mlflow.py."""
