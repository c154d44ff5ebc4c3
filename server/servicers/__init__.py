"""gRPC servicers: one module per service; they convert messages and delegate, nothing else."""
