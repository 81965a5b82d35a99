"""Load and run a built artifact: manifest, tokenization, pooling, ONNX runner, torch loaders.

The serving side of the artifact chain (build_artifacts -> artifact folder -> runtime <- services,
benchmarks). It never imports build_artifacts or services. Modules that need torch or onnxruntime
import them inside the functions that use them, so `runtime.manifest`, `runtime.tokenization`,
`runtime.pooling` and `runtime.similarity` need only numpy and tokenizers.
"""
