"""recserve server: gRPC API, dynamic batching, two-tower retrieval and ranking."""
