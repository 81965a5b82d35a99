"""PyTorch embedding service: fp32 eager + inference_mode (+ torch.compile), or int8 when it passes parity."""
