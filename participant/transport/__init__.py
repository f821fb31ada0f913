"""The participant's gRPC client: the only participant code that imports gRPC or protobuf.

``client`` makes the calls (deadlines, retries with backoff, chunked streams), ``convert`` turns
replies into domain dataclasses, ``rpc_errors`` turns gRPC errors into participant errors.
"""
