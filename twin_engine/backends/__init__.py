"""Generation backends: PyTorch, Inductor + CUDA graphs, ONNX Runtime, TensorRT."""
