import datetime

from google.protobuf import empty_pb2 as _empty_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Model(_message.Message):
    __slots__ = ("name", "model_id", "display_name", "arch", "head", "width", "class_names", "receptive_field", "patch_size", "source_job", "metrics", "size_bytes", "sha256", "create_time", "context_pixels", "target_class", "familiarity_method", "familiarity_threshold", "stain_normalization", "heatmap_precision", "expected_max_logit_deviation")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    ARCH_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    RECEPTIVE_FIELD_FIELD_NUMBER: _ClassVar[int]
    PATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_JOB_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_PIXELS_FIELD_NUMBER: _ClassVar[int]
    TARGET_CLASS_FIELD_NUMBER: _ClassVar[int]
    FAMILIARITY_METHOD_FIELD_NUMBER: _ClassVar[int]
    FAMILIARITY_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    STAIN_NORMALIZATION_FIELD_NUMBER: _ClassVar[int]
    HEATMAP_PRECISION_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_MAX_LOGIT_DEVIATION_FIELD_NUMBER: _ClassVar[int]
    name: str
    model_id: str
    display_name: str
    arch: str
    head: str
    width: int
    class_names: _containers.RepeatedScalarFieldContainer[str]
    receptive_field: int
    patch_size: int
    source_job: str
    metrics: _containers.ScalarMap[str, float]
    size_bytes: int
    sha256: str
    create_time: _timestamp_pb2.Timestamp
    context_pixels: int
    target_class: str
    familiarity_method: str
    familiarity_threshold: float
    stain_normalization: str
    heatmap_precision: str
    expected_max_logit_deviation: float
    def __init__(self, name: _Optional[str] = ..., model_id: _Optional[str] = ..., display_name: _Optional[str] = ..., arch: _Optional[str] = ..., head: _Optional[str] = ..., width: _Optional[int] = ..., class_names: _Optional[_Iterable[str]] = ..., receptive_field: _Optional[int] = ..., patch_size: _Optional[int] = ..., source_job: _Optional[str] = ..., metrics: _Optional[_Mapping[str, float]] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., context_pixels: _Optional[int] = ..., target_class: _Optional[str] = ..., familiarity_method: _Optional[str] = ..., familiarity_threshold: _Optional[float] = ..., stain_normalization: _Optional[str] = ..., heatmap_precision: _Optional[str] = ..., expected_max_logit_deviation: _Optional[float] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "next_page_token")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[Model]
    next_page_token: str
    def __init__(self, models: _Optional[_Iterable[_Union[Model, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ExportModelRequest(_message.Message):
    __slots__ = ("name", "chunk_size")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    name: str
    chunk_size: int
    def __init__(self, name: _Optional[str] = ..., chunk_size: _Optional[int] = ...) -> None: ...

class ExportModelResponse(_message.Message):
    __slots__ = ("model", "chunk_data", "offset")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CHUNK_DATA_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    model: Model
    chunk_data: bytes
    offset: int
    def __init__(self, model: _Optional[_Union[Model, _Mapping]] = ..., chunk_data: _Optional[bytes] = ..., offset: _Optional[int] = ...) -> None: ...

class ImportModelRequest(_message.Message):
    __slots__ = ("model_id", "display_name", "chunk_data")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    CHUNK_DATA_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    display_name: str
    chunk_data: bytes
    def __init__(self, model_id: _Optional[str] = ..., display_name: _Optional[str] = ..., chunk_data: _Optional[bytes] = ...) -> None: ...
