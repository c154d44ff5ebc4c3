"""The open inference protocol (KServe v2, Triton's `inference.GRPCInferenceService`) without gRPC.

`tensors` decodes and encodes tensor data, `models` exposes the recommender as the protocol's models,
`service` resolves models and versions and runs requests, `protocol` converts to and from the messages.
"""
