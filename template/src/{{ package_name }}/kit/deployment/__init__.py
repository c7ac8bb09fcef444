"""Shipping a trained model: `export` (ONNX and a torch.export program, checked against PyTorch),
`budget` (latency, throughput and memory against the budget written before training),
`predict-files` (batch inference over files, resumable, with the training preprocessing) and
`serve` (the same model behind HTTP, with a page to try it).

Managed by the copier-lightning template. onnx and onnxruntime come with the `export` extra,
FastAPI and uvicorn with the `serve` extra.
"""
