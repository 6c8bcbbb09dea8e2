"""The Open Inference Protocol's gRPC service definition and its generated Python modules.

``open_inference_grpc.proto`` is the source; the ``*_pb2*`` modules next to it are generated from
it (``make grpc``: grpcio-tools' protoc, run from the repository root) and kept in the repository so
that installing needs no protoc. Regenerate them after changing the .proto, never edit them.
"""
