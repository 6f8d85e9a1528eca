from milsil.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ClassifyBagRequest(_message.Message):
    __slots__ = ("model", "tiles")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TILES_FIELD_NUMBER: _ClassVar[int]
    model: str
    tiles: _containers.RepeatedCompositeFieldContainer[_common_pb2.Tile]
    def __init__(self, model: _Optional[str] = ..., tiles: _Optional[_Iterable[_Union[_common_pb2.Tile, _Mapping]]] = ...) -> None: ...

class TileClassification(_message.Message):
    __slots__ = ("index", "logits", "probabilities", "familiarity")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    LOGITS_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    FAMILIARITY_FIELD_NUMBER: _ClassVar[int]
    index: int
    logits: _containers.RepeatedScalarFieldContainer[float]
    probabilities: _containers.RepeatedScalarFieldContainer[float]
    familiarity: _common_pb2.Familiarity
    def __init__(self, index: _Optional[int] = ..., logits: _Optional[_Iterable[float]] = ..., probabilities: _Optional[_Iterable[float]] = ..., familiarity: _Optional[_Union[_common_pb2.Familiarity, _Mapping]] = ...) -> None: ...

class ClassifyBagResponse(_message.Message):
    __slots__ = ("model", "class_names", "tiles", "bag_logits", "bag_probabilities", "attention", "predicted_class", "familiarity")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    TILES_FIELD_NUMBER: _ClassVar[int]
    BAG_LOGITS_FIELD_NUMBER: _ClassVar[int]
    BAG_PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_CLASS_FIELD_NUMBER: _ClassVar[int]
    FAMILIARITY_FIELD_NUMBER: _ClassVar[int]
    model: str
    class_names: _containers.RepeatedScalarFieldContainer[str]
    tiles: _containers.RepeatedCompositeFieldContainer[TileClassification]
    bag_logits: _containers.RepeatedScalarFieldContainer[float]
    bag_probabilities: _containers.RepeatedScalarFieldContainer[float]
    attention: _containers.RepeatedScalarFieldContainer[float]
    predicted_class: str
    familiarity: _common_pb2.Familiarity
    def __init__(self, model: _Optional[str] = ..., class_names: _Optional[_Iterable[str]] = ..., tiles: _Optional[_Iterable[_Union[TileClassification, _Mapping]]] = ..., bag_logits: _Optional[_Iterable[float]] = ..., bag_probabilities: _Optional[_Iterable[float]] = ..., attention: _Optional[_Iterable[float]] = ..., predicted_class: _Optional[str] = ..., familiarity: _Optional[_Union[_common_pb2.Familiarity, _Mapping]] = ...) -> None: ...

class HeatmapConfig(_message.Message):
    __slots__ = ("model", "region", "stride", "value_type", "include_probabilities")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    STRIDE_FIELD_NUMBER: _ClassVar[int]
    VALUE_TYPE_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    model: str
    region: _common_pb2.Region
    stride: int
    value_type: _common_pb2.ValueType
    include_probabilities: bool
    def __init__(self, model: _Optional[str] = ..., region: _Optional[_Union[_common_pb2.Region, _Mapping]] = ..., stride: _Optional[int] = ..., value_type: _Optional[_Union[_common_pb2.ValueType, str]] = ..., include_probabilities: _Optional[bool] = ...) -> None: ...

class HeatmapRequest(_message.Message):
    __slots__ = ("config", "tiles")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    TILES_FIELD_NUMBER: _ClassVar[int]
    config: HeatmapConfig
    tiles: _containers.RepeatedCompositeFieldContainer[_common_pb2.Tile]
    def __init__(self, config: _Optional[_Union[HeatmapConfig, _Mapping]] = ..., tiles: _Optional[_Iterable[_Union[_common_pb2.Tile, _Mapping]]] = ...) -> None: ...

class HeatmapHeader(_message.Message):
    __slots__ = ("model", "class_names", "rows", "cols", "stride", "step", "origin_x", "origin_y", "value_type", "receptive_field", "context_pixels", "precision", "expected_max_logit_deviation")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    COLS_FIELD_NUMBER: _ClassVar[int]
    STRIDE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_X_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_Y_FIELD_NUMBER: _ClassVar[int]
    VALUE_TYPE_FIELD_NUMBER: _ClassVar[int]
    RECEPTIVE_FIELD_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_PIXELS_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_MAX_LOGIT_DEVIATION_FIELD_NUMBER: _ClassVar[int]
    model: str
    class_names: _containers.RepeatedScalarFieldContainer[str]
    rows: int
    cols: int
    stride: int
    step: float
    origin_x: float
    origin_y: float
    value_type: _common_pb2.ValueType
    receptive_field: int
    context_pixels: int
    precision: str
    expected_max_logit_deviation: float
    def __init__(self, model: _Optional[str] = ..., class_names: _Optional[_Iterable[str]] = ..., rows: _Optional[int] = ..., cols: _Optional[int] = ..., stride: _Optional[int] = ..., step: _Optional[float] = ..., origin_x: _Optional[float] = ..., origin_y: _Optional[float] = ..., value_type: _Optional[_Union[_common_pb2.ValueType, str]] = ..., receptive_field: _Optional[int] = ..., context_pixels: _Optional[int] = ..., precision: _Optional[str] = ..., expected_max_logit_deviation: _Optional[float] = ...) -> None: ...

class HeatmapTile(_message.Message):
    __slots__ = ("tile_index", "row", "col", "rows", "cols", "num_classes", "logits", "probabilities", "familiarity")
    TILE_INDEX_FIELD_NUMBER: _ClassVar[int]
    ROW_FIELD_NUMBER: _ClassVar[int]
    COL_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    COLS_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    LOGITS_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    FAMILIARITY_FIELD_NUMBER: _ClassVar[int]
    tile_index: int
    row: int
    col: int
    rows: int
    cols: int
    num_classes: int
    logits: bytes
    probabilities: bytes
    familiarity: _common_pb2.Familiarity
    def __init__(self, tile_index: _Optional[int] = ..., row: _Optional[int] = ..., col: _Optional[int] = ..., rows: _Optional[int] = ..., cols: _Optional[int] = ..., num_classes: _Optional[int] = ..., logits: _Optional[bytes] = ..., probabilities: _Optional[bytes] = ..., familiarity: _Optional[_Union[_common_pb2.Familiarity, _Mapping]] = ...) -> None: ...

class QueueStatus(_message.Message):
    __slots__ = ("position", "waiting")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    position: int
    waiting: int
    def __init__(self, position: _Optional[int] = ..., waiting: _Optional[int] = ...) -> None: ...

class HeatmapResponse(_message.Message):
    __slots__ = ("header", "tile", "queue", "familiarity")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    TILE_FIELD_NUMBER: _ClassVar[int]
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    FAMILIARITY_FIELD_NUMBER: _ClassVar[int]
    header: HeatmapHeader
    tile: HeatmapTile
    queue: QueueStatus
    familiarity: _common_pb2.Familiarity
    def __init__(self, header: _Optional[_Union[HeatmapHeader, _Mapping]] = ..., tile: _Optional[_Union[HeatmapTile, _Mapping]] = ..., queue: _Optional[_Union[QueueStatus, _Mapping]] = ..., familiarity: _Optional[_Union[_common_pb2.Familiarity, _Mapping]] = ...) -> None: ...

class OutlineSettings(_message.Message):
    __slots__ = ("min_area", "min_hole_area", "smooth_sigma", "merge_distance", "simplify")
    MIN_AREA_FIELD_NUMBER: _ClassVar[int]
    MIN_HOLE_AREA_FIELD_NUMBER: _ClassVar[int]
    SMOOTH_SIGMA_FIELD_NUMBER: _ClassVar[int]
    MERGE_DISTANCE_FIELD_NUMBER: _ClassVar[int]
    SIMPLIFY_FIELD_NUMBER: _ClassVar[int]
    min_area: float
    min_hole_area: float
    smooth_sigma: float
    merge_distance: float
    simplify: float
    def __init__(self, min_area: _Optional[float] = ..., min_hole_area: _Optional[float] = ..., smooth_sigma: _Optional[float] = ..., merge_distance: _Optional[float] = ..., simplify: _Optional[float] = ...) -> None: ...

class AnnotateConfig(_message.Message):
    __slots__ = ("heatmap", "class_name", "threshold_on", "threshold", "min_area", "simplify_tolerance", "classification", "color", "outline", "pixel_size_um")
    class ThresholdOn(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        THRESHOLD_ON_UNSPECIFIED: _ClassVar[AnnotateConfig.ThresholdOn]
        PROBABILITY: _ClassVar[AnnotateConfig.ThresholdOn]
        LOGIT: _ClassVar[AnnotateConfig.ThresholdOn]
    THRESHOLD_ON_UNSPECIFIED: AnnotateConfig.ThresholdOn
    PROBABILITY: AnnotateConfig.ThresholdOn
    LOGIT: AnnotateConfig.ThresholdOn
    HEATMAP_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAME_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_ON_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MIN_AREA_FIELD_NUMBER: _ClassVar[int]
    SIMPLIFY_TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    CLASSIFICATION_FIELD_NUMBER: _ClassVar[int]
    COLOR_FIELD_NUMBER: _ClassVar[int]
    OUTLINE_FIELD_NUMBER: _ClassVar[int]
    PIXEL_SIZE_UM_FIELD_NUMBER: _ClassVar[int]
    heatmap: HeatmapConfig
    class_name: str
    threshold_on: AnnotateConfig.ThresholdOn
    threshold: float
    min_area: float
    simplify_tolerance: float
    classification: str
    color: _containers.RepeatedScalarFieldContainer[int]
    outline: OutlineSettings
    pixel_size_um: float
    def __init__(self, heatmap: _Optional[_Union[HeatmapConfig, _Mapping]] = ..., class_name: _Optional[str] = ..., threshold_on: _Optional[_Union[AnnotateConfig.ThresholdOn, str]] = ..., threshold: _Optional[float] = ..., min_area: _Optional[float] = ..., simplify_tolerance: _Optional[float] = ..., classification: _Optional[str] = ..., color: _Optional[_Iterable[int]] = ..., outline: _Optional[_Union[OutlineSettings, _Mapping]] = ..., pixel_size_um: _Optional[float] = ...) -> None: ...

class AnnotateRequest(_message.Message):
    __slots__ = ("config", "tiles")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    TILES_FIELD_NUMBER: _ClassVar[int]
    config: AnnotateConfig
    tiles: _containers.RepeatedCompositeFieldContainer[_common_pb2.Tile]
    def __init__(self, config: _Optional[_Union[AnnotateConfig, _Mapping]] = ..., tiles: _Optional[_Iterable[_Union[_common_pb2.Tile, _Mapping]]] = ...) -> None: ...

class AnnotationObject(_message.Message):
    __slots__ = ("id", "area", "mean_probability", "max_probability", "mean_logit", "familiarity")
    ID_FIELD_NUMBER: _ClassVar[int]
    AREA_FIELD_NUMBER: _ClassVar[int]
    MEAN_PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    MAX_PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    MEAN_LOGIT_FIELD_NUMBER: _ClassVar[int]
    FAMILIARITY_FIELD_NUMBER: _ClassVar[int]
    id: str
    area: float
    mean_probability: float
    max_probability: float
    mean_logit: float
    familiarity: _common_pb2.Familiarity
    def __init__(self, id: _Optional[str] = ..., area: _Optional[float] = ..., mean_probability: _Optional[float] = ..., max_probability: _Optional[float] = ..., mean_logit: _Optional[float] = ..., familiarity: _Optional[_Union[_common_pb2.Familiarity, _Mapping]] = ...) -> None: ...

class AnnotateResponse(_message.Message):
    __slots__ = ("geojson", "objects", "model", "class_name", "familiarity")
    GEOJSON_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAME_FIELD_NUMBER: _ClassVar[int]
    FAMILIARITY_FIELD_NUMBER: _ClassVar[int]
    geojson: str
    objects: _containers.RepeatedCompositeFieldContainer[AnnotationObject]
    model: str
    class_name: str
    familiarity: _common_pb2.Familiarity
    def __init__(self, geojson: _Optional[str] = ..., objects: _Optional[_Iterable[_Union[AnnotationObject, _Mapping]]] = ..., model: _Optional[str] = ..., class_name: _Optional[str] = ..., familiarity: _Optional[_Union[_common_pb2.Familiarity, _Mapping]] = ...) -> None: ...

class SlideConfig(_message.Message):
    __slots__ = ("model", "path", "stride", "downsample", "tissue_only", "tile_size", "class_name", "write_tiff", "tiff_path", "roi", "outline", "pixel_size_um")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    STRIDE_FIELD_NUMBER: _ClassVar[int]
    DOWNSAMPLE_FIELD_NUMBER: _ClassVar[int]
    TISSUE_ONLY_FIELD_NUMBER: _ClassVar[int]
    TILE_SIZE_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAME_FIELD_NUMBER: _ClassVar[int]
    WRITE_TIFF_FIELD_NUMBER: _ClassVar[int]
    TIFF_PATH_FIELD_NUMBER: _ClassVar[int]
    ROI_FIELD_NUMBER: _ClassVar[int]
    OUTLINE_FIELD_NUMBER: _ClassVar[int]
    PIXEL_SIZE_UM_FIELD_NUMBER: _ClassVar[int]
    model: str
    path: str
    stride: int
    downsample: float
    tissue_only: bool
    tile_size: int
    class_name: str
    write_tiff: bool
    tiff_path: str
    roi: str
    outline: OutlineSettings
    pixel_size_um: float
    def __init__(self, model: _Optional[str] = ..., path: _Optional[str] = ..., stride: _Optional[int] = ..., downsample: _Optional[float] = ..., tissue_only: _Optional[bool] = ..., tile_size: _Optional[int] = ..., class_name: _Optional[str] = ..., write_tiff: _Optional[bool] = ..., tiff_path: _Optional[str] = ..., roi: _Optional[str] = ..., outline: _Optional[_Union[OutlineSettings, _Mapping]] = ..., pixel_size_um: _Optional[float] = ...) -> None: ...

class SlideProgress(_message.Message):
    __slots__ = ("tiles_done", "tiles_total", "tissue_megapixels", "elapsed_seconds", "eta_seconds", "stage", "queue")
    TILES_DONE_FIELD_NUMBER: _ClassVar[int]
    TILES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    TISSUE_MEGAPIXELS_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ETA_SECONDS_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    tiles_done: int
    tiles_total: int
    tissue_megapixels: float
    elapsed_seconds: float
    eta_seconds: float
    stage: str
    queue: QueueStatus
    def __init__(self, tiles_done: _Optional[int] = ..., tiles_total: _Optional[int] = ..., tissue_megapixels: _Optional[float] = ..., elapsed_seconds: _Optional[float] = ..., eta_seconds: _Optional[float] = ..., stage: _Optional[str] = ..., queue: _Optional[_Union[QueueStatus, _Mapping]] = ...) -> None: ...

class SlideSummary(_message.Message):
    __slots__ = ("model", "path", "class_name", "tiles_total", "tiles_resumed", "tissue_megapixels", "stride", "downsample", "tiff_path", "timings", "familiarity")
    class TimingsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAME_FIELD_NUMBER: _ClassVar[int]
    TILES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    TILES_RESUMED_FIELD_NUMBER: _ClassVar[int]
    TISSUE_MEGAPIXELS_FIELD_NUMBER: _ClassVar[int]
    STRIDE_FIELD_NUMBER: _ClassVar[int]
    DOWNSAMPLE_FIELD_NUMBER: _ClassVar[int]
    TIFF_PATH_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    FAMILIARITY_FIELD_NUMBER: _ClassVar[int]
    model: str
    path: str
    class_name: str
    tiles_total: int
    tiles_resumed: int
    tissue_megapixels: float
    stride: int
    downsample: float
    tiff_path: str
    timings: _containers.ScalarMap[str, float]
    familiarity: _common_pb2.Familiarity
    def __init__(self, model: _Optional[str] = ..., path: _Optional[str] = ..., class_name: _Optional[str] = ..., tiles_total: _Optional[int] = ..., tiles_resumed: _Optional[int] = ..., tissue_megapixels: _Optional[float] = ..., stride: _Optional[int] = ..., downsample: _Optional[float] = ..., tiff_path: _Optional[str] = ..., timings: _Optional[_Mapping[str, float]] = ..., familiarity: _Optional[_Union[_common_pb2.Familiarity, _Mapping]] = ...) -> None: ...

class AnnotateSlideRequest(_message.Message):
    __slots__ = ("config", "threshold", "min_area", "simplify_tolerance")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MIN_AREA_FIELD_NUMBER: _ClassVar[int]
    SIMPLIFY_TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    config: SlideConfig
    threshold: float
    min_area: float
    simplify_tolerance: float
    def __init__(self, config: _Optional[_Union[SlideConfig, _Mapping]] = ..., threshold: _Optional[float] = ..., min_area: _Optional[float] = ..., simplify_tolerance: _Optional[float] = ...) -> None: ...

class AnnotateSlideResult(_message.Message):
    __slots__ = ("geojson", "object_count", "summary")
    GEOJSON_FIELD_NUMBER: _ClassVar[int]
    OBJECT_COUNT_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    geojson: str
    object_count: int
    summary: SlideSummary
    def __init__(self, geojson: _Optional[str] = ..., object_count: _Optional[int] = ..., summary: _Optional[_Union[SlideSummary, _Mapping]] = ...) -> None: ...

class AnnotateSlideResponse(_message.Message):
    __slots__ = ("progress", "result")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    progress: SlideProgress
    result: AnnotateSlideResult
    def __init__(self, progress: _Optional[_Union[SlideProgress, _Mapping]] = ..., result: _Optional[_Union[AnnotateSlideResult, _Mapping]] = ...) -> None: ...

class SlideHeatmapRequest(_message.Message):
    __slots__ = ("config", "value_type", "include_probabilities", "omit_values", "block_size")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    VALUE_TYPE_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    OMIT_VALUES_FIELD_NUMBER: _ClassVar[int]
    BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    config: SlideConfig
    value_type: _common_pb2.ValueType
    include_probabilities: bool
    omit_values: bool
    block_size: int
    def __init__(self, config: _Optional[_Union[SlideConfig, _Mapping]] = ..., value_type: _Optional[_Union[_common_pb2.ValueType, str]] = ..., include_probabilities: _Optional[bool] = ..., omit_values: _Optional[bool] = ..., block_size: _Optional[int] = ...) -> None: ...

class SlideHeatmapResponse(_message.Message):
    __slots__ = ("progress", "header", "tile", "result")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    HEADER_FIELD_NUMBER: _ClassVar[int]
    TILE_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    progress: SlideProgress
    header: HeatmapHeader
    tile: HeatmapTile
    result: SlideSummary
    def __init__(self, progress: _Optional[_Union[SlideProgress, _Mapping]] = ..., header: _Optional[_Union[HeatmapHeader, _Mapping]] = ..., tile: _Optional[_Union[HeatmapTile, _Mapping]] = ..., result: _Optional[_Union[SlideSummary, _Mapping]] = ...) -> None: ...

class MeasureObjectsConfig(_message.Message):
    __slots__ = ("model", "region", "slide_path")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    SLIDE_PATH_FIELD_NUMBER: _ClassVar[int]
    model: str
    region: _common_pb2.Region
    slide_path: str
    def __init__(self, model: _Optional[str] = ..., region: _Optional[_Union[_common_pb2.Region, _Mapping]] = ..., slide_path: _Optional[str] = ...) -> None: ...

class MeasureObject(_message.Message):
    __slots__ = ("id", "geometry")
    ID_FIELD_NUMBER: _ClassVar[int]
    GEOMETRY_FIELD_NUMBER: _ClassVar[int]
    id: str
    geometry: str
    def __init__(self, id: _Optional[str] = ..., geometry: _Optional[str] = ...) -> None: ...

class MeasureObjectsRequest(_message.Message):
    __slots__ = ("config", "objects", "tiles")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    TILES_FIELD_NUMBER: _ClassVar[int]
    config: MeasureObjectsConfig
    objects: _containers.RepeatedCompositeFieldContainer[MeasureObject]
    tiles: _containers.RepeatedCompositeFieldContainer[_common_pb2.Tile]
    def __init__(self, config: _Optional[_Union[MeasureObjectsConfig, _Mapping]] = ..., objects: _Optional[_Iterable[_Union[MeasureObject, _Mapping]]] = ..., tiles: _Optional[_Iterable[_Union[_common_pb2.Tile, _Mapping]]] = ...) -> None: ...

class ObjectMeasurement(_message.Message):
    __slots__ = ("id", "mean_logits", "max_logits", "probabilities", "pixels", "familiarity")
    ID_FIELD_NUMBER: _ClassVar[int]
    MEAN_LOGITS_FIELD_NUMBER: _ClassVar[int]
    MAX_LOGITS_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    PIXELS_FIELD_NUMBER: _ClassVar[int]
    FAMILIARITY_FIELD_NUMBER: _ClassVar[int]
    id: str
    mean_logits: _containers.RepeatedScalarFieldContainer[float]
    max_logits: _containers.RepeatedScalarFieldContainer[float]
    probabilities: _containers.RepeatedScalarFieldContainer[float]
    pixels: int
    familiarity: _common_pb2.Familiarity
    def __init__(self, id: _Optional[str] = ..., mean_logits: _Optional[_Iterable[float]] = ..., max_logits: _Optional[_Iterable[float]] = ..., probabilities: _Optional[_Iterable[float]] = ..., pixels: _Optional[int] = ..., familiarity: _Optional[_Union[_common_pb2.Familiarity, _Mapping]] = ...) -> None: ...

class MeasureObjectsHeader(_message.Message):
    __slots__ = ("model", "class_names", "object_count", "context_pixels", "familiarity")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    OBJECT_COUNT_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_PIXELS_FIELD_NUMBER: _ClassVar[int]
    FAMILIARITY_FIELD_NUMBER: _ClassVar[int]
    model: str
    class_names: _containers.RepeatedScalarFieldContainer[str]
    object_count: int
    context_pixels: int
    familiarity: _common_pb2.Familiarity
    def __init__(self, model: _Optional[str] = ..., class_names: _Optional[_Iterable[str]] = ..., object_count: _Optional[int] = ..., context_pixels: _Optional[int] = ..., familiarity: _Optional[_Union[_common_pb2.Familiarity, _Mapping]] = ...) -> None: ...

class ObjectMeasurements(_message.Message):
    __slots__ = ("objects",)
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    objects: _containers.RepeatedCompositeFieldContainer[ObjectMeasurement]
    def __init__(self, objects: _Optional[_Iterable[_Union[ObjectMeasurement, _Mapping]]] = ...) -> None: ...

class MeasureObjectsResponse(_message.Message):
    __slots__ = ("queue", "header", "measurements")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    HEADER_FIELD_NUMBER: _ClassVar[int]
    MEASUREMENTS_FIELD_NUMBER: _ClassVar[int]
    queue: QueueStatus
    header: MeasureObjectsHeader
    measurements: ObjectMeasurements
    def __init__(self, queue: _Optional[_Union[QueueStatus, _Mapping]] = ..., header: _Optional[_Union[MeasureObjectsHeader, _Mapping]] = ..., measurements: _Optional[_Union[ObjectMeasurements, _Mapping]] = ...) -> None: ...
