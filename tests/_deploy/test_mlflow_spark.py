"""Batch scoring with ``mlflow.pyfunc.spark_udf`` (pyspark local[1], default result type).

The result type is MLflow's default, inferred from the saved signature: an array per
row for the single-output model, a struct of one field per output for the other.
"""

from __future__ import annotations

import shutil
import sys
import warnings
from collections.abc import Iterator

import numpy as np
import pytest

mlflow = pytest.importorskip("mlflow")
pd = pytest.importorskip("pandas")
pytest.importorskip("pyspark", reason="pyspark is not installed (pip install pyspark)")

from onnx_selenc import mlflow as om  # noqa: E402
from tests._deploy.test_mlflow_serving import Saved, _reference, saved  # noqa: E402, F401

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:.*pandas >= 3.0.0:FutureWarning"),
    pytest.mark.skipif(shutil.which("java") is None, reason="pyspark needs a Java runtime"),
]


@pytest.fixture(scope="module")
def spark() -> Iterator[object]:
    from pyspark.sql import SparkSession

    with pytest.MonkeyPatch.context() as mp:
        # The Python workers must be this interpreter (with onnxruntime and pandas).
        mp.setenv("PYSPARK_PYTHON", sys.executable)
        mp.setenv("PYSPARK_DRIVER_PYTHON", sys.executable)
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        session = (
            SparkSession.builder.master("local[1]")
            .appName("onnx-selenc-tests")
            .config("spark.ui.enabled", "false")
            .config("spark.sql.shuffle.partitions", "1")
            .getOrCreate()
        )
        try:
            yield session
        finally:
            session.stop()


def _frame(spark, x: np.ndarray):  # type: ignore[no-untyped-def]
    return spark.createDataFrame(pd.DataFrame({"x": [s.ravel().tolist() for s in x]}))


def test_spark_udf_default_result_type_single_output(spark, saved: Saved) -> None:  # noqa: F811
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        udf = mlflow.pyfunc.spark_udf(
            spark,
            str(saved.single),
            env_manager="local",
            # The executors' environment: a key file *path* (a mounted secret).
            extra_env={om.DEFAULT_KEY_ENV: str(saved.tier1)},
        )
    rows = _frame(spark, saved.x).withColumn("y", udf("x")).select("y").collect()
    (y,) = _reference(saved.single_pkg, saved.tier1, saved.x)
    np.testing.assert_array_equal(np.array([r.y for r in rows], dtype=np.float32), y)


def test_spark_udf_default_result_type_two_outputs(spark, saved: Saved) -> None:  # noqa: F811
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        udf = mlflow.pyfunc.spark_udf(
            spark,
            str(saved.multi),
            env_manager="local",
            extra_env={om.DEFAULT_KEY_ENV: str(saved.multi_tier1)},
        )
    rows = _frame(spark, saved.x).withColumn("p", udf("x")).select("p").collect()
    y, label = _reference(saved.multi_pkg, saved.multi_tier1, saved.x)
    np.testing.assert_array_equal(np.array([r.p.y for r in rows], dtype=np.float32), y)
    np.testing.assert_array_equal(np.array([r.p.label for r in rows]), label)
