"""Model zoo for graphprune: real exported ONNX models used by tests and benchmarks."""
