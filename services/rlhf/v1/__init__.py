"""Generated gRPC stubs for the rlhf.v1 API (do not edit)."""
