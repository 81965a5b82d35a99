"""Model -> deployable artifacts (fp32 weights, int8 torch, ONNX, optimized ONNX, int8 ONNX) + manifest.

Kept free of heavy imports: the ONNX service imports the torch-free modules of this package
(corpus, tokenization, onnx_runner, manifest) without pulling in torch.
"""
