"""The zoo gateway: Open Inference Protocol v2 (REST + gRPC) and task routes in front of TorchServe."""
