"""Generated protobuf and gRPC code for the open inference protocol, KServe v2 (run `make proto`)."""
