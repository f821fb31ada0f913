"""The participant's use cases: the daemon's loop, secure rounds, the paillier key ceremony and
model chain, and the durable local state they answer from (no gRPC: see ``service.calls``)."""
