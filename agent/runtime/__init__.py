"""Inference runtimes for the agent: load a verified, self-tested package and predict.

from agent.runtime import Model
model = Model.load(Path("digits-1.0.0-onnx-int8.efpkg"), threads=2)
prediction = model.predict(rows)      # raw features, (n, 64)
prediction.labels, prediction.confidence, model.ref
"""

from .backends import TFLITE_ENV, available_runtimes
from .model import MAX_BATCH, Model, Prediction, SelfTestResult

__all__ = ["MAX_BATCH", "TFLITE_ENV", "Model", "Prediction", "SelfTestResult", "available_runtimes"]
