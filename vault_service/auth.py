"""Bearer-token authentication and role checks, as one server interceptor.

The interceptor also turns VaultError into the rich error model for every
RPC of our services, so servicers just raise.
"""

from __future__ import annotations

import contextvars
import hmac
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from sqlalchemy.engine import Engine

from vault_service.errors import VaultError
from vault_service.storage import tokens
from vault_service.storage.engine import run_tx
from vault_service.storage.tokens import ROLE_ADMIN, ROLE_NODE, Principal

log = logging.getLogger(__name__)

SERVICE_ROLES = {
    "sessionvault.v1.SyncService": ROLE_NODE,
    "sessionvault.v1.AdminService": ROLE_ADMIN,
}
_PRINCIPAL: contextvars.ContextVar[Principal] = contextvars.ContextVar("principal")
RELOAD_INTERVAL_S = 1.0


def current_principal() -> Principal:
    """The caller of the RPC being served (set by AuthInterceptor)."""
    return _PRINCIPAL.get()


class TokenStore:
    """Token hashes -> principals, read from the database and reloaded on a miss
    (at most once a second, so unknown tokens cannot hammer the database)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._lock = threading.Lock()
        self._by_hash: dict[str, Principal] = {}
        self._loaded_at = 0.0

    def reload(self) -> None:
        by_hash = run_tx(self.engine, tokens.load_all, "load tokens")
        with self._lock:
            self._by_hash = by_hash
            self._loaded_at = time.monotonic()

    def lookup(self, token: str) -> Principal | None:
        digest = tokens.token_hash(token)
        found = self._find(digest)
        if found is None and time.monotonic() - self._loaded_at > RELOAD_INTERVAL_S:
            self.reload()
            found = self._find(digest)
        return found

    def _find(self, digest: str) -> Principal | None:
        with self._lock:
            for known, principal in self._by_hash.items():
                if hmac.compare_digest(known, digest):
                    return principal
        return None


def authenticate(store: TokenStore, metadata: dict[str, str], role: str) -> Principal:
    header = metadata.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if not header or scheme.lower() != "bearer" or not token.strip():
        raise VaultError(
            grpc.StatusCode.UNAUTHENTICATED, "MISSING_TOKEN", "send 'authorization: Bearer <token>' metadata"
        )
    principal = store.lookup(token.strip())
    if principal is None:
        raise VaultError(grpc.StatusCode.UNAUTHENTICATED, "INVALID_TOKEN", "the token is not known")
    if principal.role != role:
        raise VaultError(
            grpc.StatusCode.PERMISSION_DENIED,
            "WRONG_ROLE",
            f"this service needs a {role!r} token, not {principal.role!r}",
            {"required_role": role},
        )
    return principal


class AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, store: TokenStore) -> None:
        self.store = store

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        service = details.method.split("/")[1] if details.method.count("/") == 2 else ""
        role = SERVICE_ROLES.get(service)
        if role is None or handler is None:  # health, reflection: open
            return handler
        metadata = {k: v for k, v in details.invocation_metadata or () if isinstance(v, str)}
        try:
            principal = authenticate(self.store, metadata, role)
        except VaultError as err:
            return _wrap(handler, None, err)
        return _wrap(handler, principal, None)


async def _abort(context: grpc.aio.ServicerContext, err: VaultError) -> None:
    status = err.to_status()
    await context.abort(status.code, status.details, status.trailing_metadata)


def _wrap(handler: Any, principal: Principal | None, refusal: VaultError | None) -> Any:
    """Same handler, run with the principal set and VaultErrors turned into statuses."""

    async def enter(context: grpc.aio.ServicerContext) -> None:
        if refusal is not None:
            await _abort(context, refusal)
        _PRINCIPAL.set(principal)  # type: ignore[arg-type]

    if handler.response_streaming:
        behavior = handler.stream_stream if handler.request_streaming else handler.unary_stream

        async def streaming(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            await enter(context)
            responses = behavior(request, context)
            try:
                async for response in responses:
                    yield response
            except VaultError as err:
                await _abort(context, err)
            finally:
                await responses.aclose()  # run the servicer's cleanup now, not at garbage collection

        field = "stream_stream" if handler.request_streaming else "unary_stream"
        return handler._replace(**{field: streaming})

    behavior = handler.stream_unary if handler.request_streaming else handler.unary_unary

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await enter(context)
        try:
            return await behavior(request, context)
        except VaultError as err:
            await _abort(context, err)

    field = "stream_unary" if handler.request_streaming else "unary_unary"
    return handler._replace(**{field: unary})
