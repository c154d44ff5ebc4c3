"""Generated protobuf and gRPC code for the recserve API (do not edit; run `make proto`)."""
