"""The model MLflow saves and loads from code (MLflow's models-from-code).

``save_model`` and ``log_model`` hand MLflow this file's path instead of a pickled
:class:`EncryptedOnnxModel`: the saved folder then holds no pickle (and MLflow logs no
CloudPickle warning), and loading runs this file with ``code/`` (the saved
``onnx_selenc`` package) on the path.
"""

from mlflow.models import set_model

from onnx_selenc._deploy.pyfunc import EncryptedOnnxModel

set_model(EncryptedOnnxModel())
