"""Generated gRPC/protobuf stubs of the milsil v1 API (``proto/milsil/v1/*.proto``).

Do not edit the ``*_pb2*.py`` files: regenerate them with ``python proto/generate.py``;
``tests/test_proto_fresh.py`` fails when they are stale.
"""
