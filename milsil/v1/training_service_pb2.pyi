import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from milsil.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Bag(_message.Message):
    __slots__ = ("bag_id", "label", "patient_id", "tiles")
    BAG_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    TILES_FIELD_NUMBER: _ClassVar[int]
    bag_id: str
    label: str
    patient_id: str
    tiles: _containers.RepeatedCompositeFieldContainer[_common_pb2.Tile]
    def __init__(self, bag_id: _Optional[str] = ..., label: _Optional[str] = ..., patient_id: _Optional[str] = ..., tiles: _Optional[_Iterable[_Union[_common_pb2.Tile, _Mapping]]] = ...) -> None: ...

class UploadDatasetRequest(_message.Message):
    __slots__ = ("display_name", "bags")
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    BAGS_FIELD_NUMBER: _ClassVar[int]
    display_name: str
    bags: _containers.RepeatedCompositeFieldContainer[Bag]
    def __init__(self, display_name: _Optional[str] = ..., bags: _Optional[_Iterable[_Union[Bag, _Mapping]]] = ...) -> None: ...

class Dataset(_message.Message):
    __slots__ = ("name", "dataset_id", "display_name", "class_names", "bag_count", "tile_count", "patient_count", "size_bytes", "already_existed", "create_time")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    BAG_COUNT_FIELD_NUMBER: _ClassVar[int]
    TILE_COUNT_FIELD_NUMBER: _ClassVar[int]
    PATIENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    ALREADY_EXISTED_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    dataset_id: str
    display_name: str
    class_names: _containers.RepeatedScalarFieldContainer[str]
    bag_count: int
    tile_count: int
    patient_count: int
    size_bytes: int
    already_existed: bool
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., dataset_id: _Optional[str] = ..., display_name: _Optional[str] = ..., class_names: _Optional[_Iterable[str]] = ..., bag_count: _Optional[int] = ..., tile_count: _Optional[int] = ..., patient_count: _Optional[int] = ..., size_bytes: _Optional[int] = ..., already_existed: _Optional[bool] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class TrainingConfig(_message.Message):
    __slots__ = ("arch", "head", "width", "epochs", "learning_rate", "lr_decay", "batch_size", "patch_size", "seed", "validation_fraction", "folds", "fold", "no_augment", "pretrained", "recipe", "stain_normalize")
    ARCH_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    LR_DECAY_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    PATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_FRACTION_FIELD_NUMBER: _ClassVar[int]
    FOLDS_FIELD_NUMBER: _ClassVar[int]
    FOLD_FIELD_NUMBER: _ClassVar[int]
    NO_AUGMENT_FIELD_NUMBER: _ClassVar[int]
    PRETRAINED_FIELD_NUMBER: _ClassVar[int]
    RECIPE_FIELD_NUMBER: _ClassVar[int]
    STAIN_NORMALIZE_FIELD_NUMBER: _ClassVar[int]
    arch: str
    head: str
    width: int
    epochs: int
    learning_rate: float
    lr_decay: float
    batch_size: int
    patch_size: int
    seed: int
    validation_fraction: float
    folds: int
    fold: int
    no_augment: bool
    pretrained: str
    recipe: str
    stain_normalize: str
    def __init__(self, arch: _Optional[str] = ..., head: _Optional[str] = ..., width: _Optional[int] = ..., epochs: _Optional[int] = ..., learning_rate: _Optional[float] = ..., lr_decay: _Optional[float] = ..., batch_size: _Optional[int] = ..., patch_size: _Optional[int] = ..., seed: _Optional[int] = ..., validation_fraction: _Optional[float] = ..., folds: _Optional[int] = ..., fold: _Optional[int] = ..., no_augment: _Optional[bool] = ..., pretrained: _Optional[str] = ..., recipe: _Optional[str] = ..., stain_normalize: _Optional[str] = ...) -> None: ...

class StartTrainingRequest(_message.Message):
    __slots__ = ("dataset", "config", "display_name", "resume_job")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    RESUME_JOB_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    config: TrainingConfig
    display_name: str
    resume_job: str
    def __init__(self, dataset: _Optional[str] = ..., config: _Optional[_Union[TrainingConfig, _Mapping]] = ..., display_name: _Optional[str] = ..., resume_job: _Optional[str] = ...) -> None: ...

class TrainingProgress(_message.Message):
    __slots__ = ("epoch", "epochs", "step", "steps_per_epoch", "loss", "sil_accuracy", "mil_accuracy", "val_sil_accuracy", "val_mil_accuracy", "val_mil_auroc", "eta_seconds", "elapsed_seconds")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    STEPS_PER_EPOCH_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    SIL_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    MIL_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    VAL_SIL_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    VAL_MIL_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    VAL_MIL_AUROC_FIELD_NUMBER: _ClassVar[int]
    ETA_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    epochs: int
    step: int
    steps_per_epoch: int
    loss: float
    sil_accuracy: float
    mil_accuracy: float
    val_sil_accuracy: float
    val_mil_accuracy: float
    val_mil_auroc: float
    eta_seconds: float
    elapsed_seconds: float
    def __init__(self, epoch: _Optional[int] = ..., epochs: _Optional[int] = ..., step: _Optional[int] = ..., steps_per_epoch: _Optional[int] = ..., loss: _Optional[float] = ..., sil_accuracy: _Optional[float] = ..., mil_accuracy: _Optional[float] = ..., val_sil_accuracy: _Optional[float] = ..., val_mil_accuracy: _Optional[float] = ..., val_mil_auroc: _Optional[float] = ..., eta_seconds: _Optional[float] = ..., elapsed_seconds: _Optional[float] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("name", "job_id", "display_name", "state", "dataset", "config", "progress", "model", "error", "create_time", "update_time", "end_time", "attempts")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[Job.State]
        QUEUED: _ClassVar[Job.State]
        RUNNING: _ClassVar[Job.State]
        SUCCEEDED: _ClassVar[Job.State]
        FAILED: _ClassVar[Job.State]
        CANCELLED: _ClassVar[Job.State]
        INTERRUPTED: _ClassVar[Job.State]
    STATE_UNSPECIFIED: Job.State
    QUEUED: Job.State
    RUNNING: Job.State
    SUCCEEDED: Job.State
    FAILED: Job.State
    CANCELLED: Job.State
    INTERRUPTED: Job.State
    NAME_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    job_id: str
    display_name: str
    state: Job.State
    dataset: str
    config: TrainingConfig
    progress: TrainingProgress
    model: str
    error: str
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    attempts: int
    def __init__(self, name: _Optional[str] = ..., job_id: _Optional[str] = ..., display_name: _Optional[str] = ..., state: _Optional[_Union[Job.State, str]] = ..., dataset: _Optional[str] = ..., config: _Optional[_Union[TrainingConfig, _Mapping]] = ..., progress: _Optional[_Union[TrainingProgress, _Mapping]] = ..., model: _Optional[str] = ..., error: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., attempts: _Optional[int] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "state")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    state: Job.State
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., state: _Optional[_Union[Job.State, str]] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class WatchJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...
