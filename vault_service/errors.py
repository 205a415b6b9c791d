"""Domain errors of the vault and their mapping to gRPC's rich error model.

Every refusal carries a gRPC status code and an UPPER_SNAKE reason, sent to
clients as a `google.rpc.ErrorInfo` detail so they can branch on it.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

ERROR_DOMAIN = "sessionvault.v1"


class VaultError(Exception):
    """A refusal the caller should see as `code` + `reason`."""

    def __init__(
        self, code: grpc.StatusCode, reason: str, message: str, metadata: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.metadata = metadata or {}

    def to_status(self) -> grpc.Status:
        info = error_details_pb2.ErrorInfo(reason=self.reason, domain=ERROR_DOMAIN, metadata=self.metadata)
        detail = any_pb2.Any()
        detail.Pack(info)
        proto = status_pb2.Status(code=self.code.value[0], message=self.message, details=[detail])
        return rpc_status.to_status(proto)

    def __repr__(self) -> str:
        return f"VaultError({self.code.name}, {self.reason}, {self.message!r})"


def invalid(reason: str, message: str, **metadata: str) -> VaultError:
    return VaultError(grpc.StatusCode.INVALID_ARGUMENT, reason, message, metadata)


def not_found(reason: str, message: str, **metadata: str) -> VaultError:
    return VaultError(grpc.StatusCode.NOT_FOUND, reason, message, metadata)


def precondition(reason: str, message: str, **metadata: str) -> VaultError:
    return VaultError(grpc.StatusCode.FAILED_PRECONDITION, reason, message, metadata)


def data_loss(reason: str, message: str, **metadata: str) -> VaultError:
    return VaultError(grpc.StatusCode.DATA_LOSS, reason, message, metadata)


def error_info(err: grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo detail of a failed call, if it has one (client-side helper)."""
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None
