"""The milsil gRPC server: thin servicers over the ``milsil`` library.

``milsil_server.app.build_server(ServerConfig(...))`` starts a server; ``milsil serve`` is the CLI.
Each RPC converts its request (:mod:`~milsil_server.convert`, the one home of message <->
library conversions), calls plain code that knows nothing of gRPC, and converts back:

* servicers, one module per service: :mod:`~milsil_server.model_service`,
  :mod:`~milsil_server.inference_service`, :mod:`~milsil_server.training_service`;
* plain modules: :mod:`~milsil_server.store` (SQLite + files), :mod:`~milsil_server.inference`
  (tiles, regions, bags, compute slots, model cache), :mod:`~milsil_server.slide_jobs`
  (whole-slide requests), :mod:`~milsil_server.jobs` (training processes),
  :mod:`~milsil_server.paths` (slide roots, output root, confinement),
  :mod:`~milsil_server.runner` (background work behind a stream, work-folder locks);
* :mod:`~milsil_server.app` (assembly, interceptor), :mod:`~milsil_server.errors`
  (status codes), :mod:`~milsil_server.auth` (token, TLS), :mod:`~milsil_server.cli`.
"""
