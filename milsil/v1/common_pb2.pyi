from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ValueType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VALUE_TYPE_UNSPECIFIED: _ClassVar[ValueType]
    VALUE_TYPE_FLOAT16: _ClassVar[ValueType]
    VALUE_TYPE_FLOAT32: _ClassVar[ValueType]
VALUE_TYPE_UNSPECIFIED: ValueType
VALUE_TYPE_FLOAT16: ValueType
VALUE_TYPE_FLOAT32: ValueType

class Tile(_message.Message):
    __slots__ = ("encoding", "data", "width", "height", "x", "y", "downsample")
    class Encoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ENCODING_UNSPECIFIED: _ClassVar[Tile.Encoding]
        RAW_RGB8: _ClassVar[Tile.Encoding]
        PNG: _ClassVar[Tile.Encoding]
        JPEG: _ClassVar[Tile.Encoding]
    ENCODING_UNSPECIFIED: Tile.Encoding
    RAW_RGB8: Tile.Encoding
    PNG: Tile.Encoding
    JPEG: Tile.Encoding
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    DOWNSAMPLE_FIELD_NUMBER: _ClassVar[int]
    encoding: Tile.Encoding
    data: bytes
    width: int
    height: int
    x: float
    y: float
    downsample: float
    def __init__(self, encoding: _Optional[_Union[Tile.Encoding, str]] = ..., data: _Optional[bytes] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., x: _Optional[float] = ..., y: _Optional[float] = ..., downsample: _Optional[float] = ...) -> None: ...

class Region(_message.Message):
    __slots__ = ("x", "y", "width", "height", "downsample")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    DOWNSAMPLE_FIELD_NUMBER: _ClassVar[int]
    x: float
    y: float
    width: float
    height: float
    downsample: float
    def __init__(self, x: _Optional[float] = ..., y: _Optional[float] = ..., width: _Optional[float] = ..., height: _Optional[float] = ..., downsample: _Optional[float] = ...) -> None: ...

class Familiarity(_message.Message):
    __slots__ = ("available", "score", "threshold", "unlike_training")
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    UNLIKE_TRAINING_FIELD_NUMBER: _ClassVar[int]
    available: bool
    score: float
    threshold: float
    unlike_training: bool
    def __init__(self, available: _Optional[bool] = ..., score: _Optional[float] = ..., threshold: _Optional[float] = ..., unlike_training: _Optional[bool] = ...) -> None: ...
