"""FRLIE: the network (``model.network``), its weight files (``model.checkpoint``, both torch) and
the ONNX contract with the bundled weights (``model.contract``, torch-free, used by the service).

Import from the submodules: this package itself imports nothing, so the service can read the
contract without torch installed.
"""
