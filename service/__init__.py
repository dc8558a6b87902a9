"""FRLIE Serve: the HTTP inference service and folder CLI on ONNX Runtime (no torch)."""
