from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class KVFrameHeader(_message.Message):
    __slots__ = ("transfer_id", "layer_index", "num_layers", "token_start", "token_end", "num_prompt_tokens", "block_size", "dtype", "shape", "checksum", "source_block_ids", "sender", "mac", "payload_mac")
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    LAYER_INDEX_FIELD_NUMBER: _ClassVar[int]
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_START_FIELD_NUMBER: _ClassVar[int]
    TOKEN_END_FIELD_NUMBER: _ClassVar[int]
    NUM_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    SOURCE_BLOCK_IDS_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_MAC_FIELD_NUMBER: _ClassVar[int]
    transfer_id: str
    layer_index: int
    num_layers: int
    token_start: int
    token_end: int
    num_prompt_tokens: int
    block_size: int
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    checksum: int
    source_block_ids: _containers.RepeatedScalarFieldContainer[int]
    sender: str
    mac: bytes
    payload_mac: bytes
    def __init__(self, transfer_id: _Optional[str] = ..., layer_index: _Optional[int] = ..., num_layers: _Optional[int] = ..., token_start: _Optional[int] = ..., token_end: _Optional[int] = ..., num_prompt_tokens: _Optional[int] = ..., block_size: _Optional[int] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., checksum: _Optional[int] = ..., source_block_ids: _Optional[_Iterable[int]] = ..., sender: _Optional[str] = ..., mac: _Optional[bytes] = ..., payload_mac: _Optional[bytes] = ...) -> None: ...

class KVFrame(_message.Message):
    __slots__ = ("header", "payload")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    header: KVFrameHeader
    payload: bytes
    def __init__(self, header: _Optional[_Union[KVFrameHeader, _Mapping]] = ..., payload: _Optional[bytes] = ...) -> None: ...

class PushResponse(_message.Message):
    __slots__ = ("frames", "bytes")
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    frames: int
    bytes: int
    def __init__(self, frames: _Optional[int] = ..., bytes: _Optional[int] = ...) -> None: ...

class AbortTransferRequest(_message.Message):
    __slots__ = ("transfer_id", "reason", "mac")
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    transfer_id: str
    reason: str
    mac: bytes
    def __init__(self, transfer_id: _Optional[str] = ..., reason: _Optional[str] = ..., mac: _Optional[bytes] = ...) -> None: ...

class AbortTransferResponse(_message.Message):
    __slots__ = ("known",)
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    known: bool
    def __init__(self, known: _Optional[bool] = ...) -> None: ...

class GetTransferStatsRequest(_message.Message):
    __slots__ = ("transfer_ids",)
    TRANSFER_IDS_FIELD_NUMBER: _ClassVar[int]
    transfer_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, transfer_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class TransferOutcome(_message.Message):
    __slots__ = ("transfer_id", "complete", "recomputed", "failure", "bytes", "seconds")
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    RECOMPUTED_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    transfer_id: str
    complete: bool
    recomputed: bool
    failure: str
    bytes: int
    seconds: float
    def __init__(self, transfer_id: _Optional[str] = ..., complete: _Optional[bool] = ..., recomputed: _Optional[bool] = ..., failure: _Optional[str] = ..., bytes: _Optional[int] = ..., seconds: _Optional[float] = ...) -> None: ...

class GetTransferStatsResponse(_message.Message):
    __slots__ = ("bytes_total", "frames_total", "transfers_completed", "transfers_recomputed", "seconds_total", "checksum_failures", "timeouts", "outcomes", "bytes_sent_total", "frames_sent_total", "num_free_blocks", "num_total_blocks", "auth_failures")
    BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    FRAMES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    TRANSFERS_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    TRANSFERS_RECOMPUTED_FIELD_NUMBER: _ClassVar[int]
    SECONDS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FAILURES_FIELD_NUMBER: _ClassVar[int]
    TIMEOUTS_FIELD_NUMBER: _ClassVar[int]
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    BYTES_SENT_TOTAL_FIELD_NUMBER: _ClassVar[int]
    FRAMES_SENT_TOTAL_FIELD_NUMBER: _ClassVar[int]
    NUM_FREE_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    NUM_TOTAL_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    AUTH_FAILURES_FIELD_NUMBER: _ClassVar[int]
    bytes_total: int
    frames_total: int
    transfers_completed: int
    transfers_recomputed: int
    seconds_total: float
    checksum_failures: int
    timeouts: int
    outcomes: _containers.RepeatedCompositeFieldContainer[TransferOutcome]
    bytes_sent_total: int
    frames_sent_total: int
    num_free_blocks: int
    num_total_blocks: int
    auth_failures: int
    def __init__(self, bytes_total: _Optional[int] = ..., frames_total: _Optional[int] = ..., transfers_completed: _Optional[int] = ..., transfers_recomputed: _Optional[int] = ..., seconds_total: _Optional[float] = ..., checksum_failures: _Optional[int] = ..., timeouts: _Optional[int] = ..., outcomes: _Optional[_Iterable[_Union[TransferOutcome, _Mapping]]] = ..., bytes_sent_total: _Optional[int] = ..., frames_sent_total: _Optional[int] = ..., num_free_blocks: _Optional[int] = ..., num_total_blocks: _Optional[int] = ..., auth_failures: _Optional[int] = ...) -> None: ...
