"""The milsil gRPC server: thin servicers over the ``milsil`` library.

``milsil_server.app.build_server(ServerConfig(...))`` starts a server; ``milsil serve`` is the CLI.
The servicers only translate messages; the work lives in plain modules (store, inference,
jobs) that know nothing of gRPC, so each can be tested on its own.
"""
