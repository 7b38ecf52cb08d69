"""Server-side model tooling: float networks, ONNX/TFLite exporters, the int8 quantizer and
its checks (:mod:`.quantize`), and the package builder.

Never imported by the agent: it needs onnx, the ORT quantizer and scikit-learn.
"""

from .build import FLAVORS, Flavor, build_package
from .network import Network

__all__ = ["FLAVORS", "Flavor", "Network", "build_package"]
