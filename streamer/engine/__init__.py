"""The engine: bundle loading, onnxruntime sessions and provider choice, batching, the runner."""
