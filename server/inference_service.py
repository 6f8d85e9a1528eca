"""milsil.v1.InferenceService: a thin façade, one RPC family module per kind of call.

Every method hands the request to its family, with the server's one :class:`~.resources.Resources`
(store, model cache, compute slots, memory budget, path rules):

* ClassifyBag: :mod:`.bags` (a bag of tiles);
* Heatmap, Annotate: :mod:`.regions` (a region the client streams);
* MeasureObjects: :mod:`.objects` (objects and the region they lie in);
* AnnotateSlide, SlideHeatmap: :mod:`.slides` (a slide the server reads).

Servicers never call ``context.abort``: they raise, and the interceptor in :mod:`.app`
turns that into a status.
"""

from __future__ import annotations

from milsil.v1 import inference_service_pb2_grpc

from . import bags, objects, regions, slides
from .resources import Resources


class InferenceServicer(inference_service_pb2_grpc.InferenceServiceServicer):
    def __init__(self, resources: Resources) -> None:
        self.resources = resources

    def ClassifyBag(self, request_iterator, context):
        return bags.classify_bag_rpc(self.resources, request_iterator, context)

    def Heatmap(self, request_iterator, context):
        return regions.heatmap_rpc(self.resources, request_iterator, context)

    def Annotate(self, request_iterator, context):
        return regions.annotate_rpc(self.resources, request_iterator, context)

    def MeasureObjects(self, request_iterator, context):
        return objects.measure_objects_rpc(self.resources, request_iterator, context)

    def AnnotateSlide(self, request, context):
        return slides.annotate_slide_rpc(self.resources, request, context)

    def SlideHeatmap(self, request, context):
        return slides.slide_heatmap_rpc(self.resources, request, context)
