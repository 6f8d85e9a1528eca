"""The milsil gRPC server: thin servicers over the ``milsil`` library.

``milsil_server.app.build_server(ServerConfig(...))`` starts a server; ``milsil serve`` is the CLI.
Each RPC belongs to one family module, readable top to bottom: the RPC, then how its
request becomes plain values and how the result becomes messages:

* servicers, one module per service: :mod:`~milsil_server.model_service` and
  :mod:`~milsil_server.training_service` (their conversions beside them), and
  :mod:`~milsil_server.inference_service`, a façade over the inference families:
  :mod:`~milsil_server.bags` (ClassifyBag), :mod:`~milsil_server.regions` (Heatmap,
  Annotate), :mod:`~milsil_server.objects` (MeasureObjects), :mod:`~milsil_server.slides`
  (AnnotateSlide, SlideHeatmap and their slide jobs);
* shared by the families: :mod:`~milsil_server.resources` (limits, model cache and the
  one :class:`~milsil_server.resources.Resources` object), :mod:`~milsil_server.messages`
  (the message codec they share), :mod:`~milsil_server.tiles` (tile checks, decoding),
  :mod:`~milsil_server.region_stream` (a streamed region computed band by band),
  :mod:`~milsil_server.memory` (the ``--max-memory`` budget), :mod:`~milsil_server.slots`
  (compute slots, turns and the per-client queue), :mod:`~milsil_server.inbox` (a
  stream's messages under ``--stream-idle-timeout``), :mod:`~milsil_server.paths` (slide roots, output root,
  confinement), :mod:`~milsil_server.runner` (background work behind a stream, work-folder
  locks);
* state and training: :mod:`~milsil_server.store` (SQLite + files), :mod:`~milsil_server.jobs`
  (training processes), :mod:`~milsil_server.trainer`;
* :mod:`~milsil_server.app` (assembly, interceptor, per-client call cap),
  :mod:`~milsil_server.metrics` (Prometheus), :mod:`~milsil_server.errors` (status codes),
  :mod:`~milsil_server.auth` (tokens, the caller's identity, TLS), :mod:`~milsil_server.cli`.
"""
