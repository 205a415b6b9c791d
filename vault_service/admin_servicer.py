"""AdminService: what operators see and do."""

from __future__ import annotations

import asyncio
import base64
import binascii

from sessionvault.v1 import admin_service_pb2 as admin_pb
from sessionvault.v1 import admin_service_pb2_grpc as admin_grpc

from vault_service import convert
from vault_service.auth import current_principal
from vault_service.errors import invalid
from vault_service.ids import check_id
from vault_service.vault import Vault

DEFAULT_PAGE = 100
MAX_PAGE = 1000


def page_size(requested: int) -> int:
    if requested < 0 or requested > MAX_PAGE:
        raise invalid("INVALID_PAGE_SIZE", f"page_size must be between 0 and {MAX_PAGE}")
    return requested or DEFAULT_PAGE


def encode_token(value: str) -> str:
    return base64.urlsafe_b64encode(value.encode()).decode()


def decode_token(token: str) -> str:
    try:
        return base64.b64decode(token.encode(), altchars=b"-_", validate=True).decode() if token else ""
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise invalid("INVALID_PAGE_TOKEN", "page_token is not a token this service issued") from exc


class AdminServicer(admin_grpc.AdminServiceServicer):
    def __init__(self, vault: Vault) -> None:
        self.vault = vault

    async def ListSessions(self, request: admin_pb.ListSessionsRequest, context) -> admin_pb.ListSessionsResponse:
        limit = page_size(request.page_size)
        after = decode_token(request.page_token)
        infos = await asyncio.to_thread(self.vault.list_sessions, current_principal(), after, limit + 1)
        more = len(infos) > limit
        infos = infos[:limit]
        return admin_pb.ListSessionsResponse(
            sessions=[convert.session(i) for i in infos],
            next_page_token=encode_token(infos[-1].row.session_id) if more else "",
        )

    async def GetSession(self, request: admin_pb.GetSessionRequest, context) -> admin_pb.GetSessionResponse:
        sid = check_id(request.session_id, "session_id")
        info = await asyncio.to_thread(self.vault.get_session, current_principal(), sid)
        return admin_pb.GetSessionResponse(session=convert.session(info))

    async def DeleteSession(self, request: admin_pb.DeleteSessionRequest, context) -> admin_pb.DeleteSessionResponse:
        sid = check_id(request.session_id, "session_id")
        info = await asyncio.to_thread(self.vault.delete_session, current_principal(), sid)
        return admin_pb.DeleteSessionResponse(session=convert.session(info))

    async def UndeleteSession(
        self, request: admin_pb.UndeleteSessionRequest, context
    ) -> admin_pb.UndeleteSessionResponse:
        sid = check_id(request.session_id, "session_id")
        info = await asyncio.to_thread(self.vault.undelete_session, current_principal(), sid)
        return admin_pb.UndeleteSessionResponse(session=convert.session(info))

    async def DestroySession(self, request: admin_pb.DestroySessionRequest, context) -> admin_pb.DestroySessionResponse:
        sid = check_id(request.session_id, "session_id")
        count = await asyncio.to_thread(self.vault.destroy_session, current_principal(), sid)
        return admin_pb.DestroySessionResponse(records_destroyed=count)

    async def ListVersions(self, request: admin_pb.ListVersionsRequest, context) -> admin_pb.ListVersionsResponse:
        sid = check_id(request.session_id, "session_id")
        limit = page_size(request.page_size)
        below_text = decode_token(request.page_token)
        if below_text and not below_text.isdigit():
            raise invalid("INVALID_PAGE_TOKEN", "page_token is not a token this service issued")
        rows = await asyncio.to_thread(
            self.vault.list_versions, current_principal(), sid, int(below_text or 0), limit + 1
        )
        more = len(rows) > limit
        rows = rows[:limit]
        return admin_pb.ListVersionsResponse(
            versions=[convert.version(r) for r in rows],
            next_page_token=encode_token(str(rows[-1].version)) if more else "",
        )

    async def ListNodes(self, request: admin_pb.ListNodesRequest, context) -> admin_pb.ListNodesResponse:
        rows = await asyncio.to_thread(self.vault.list_nodes, current_principal())
        return admin_pb.ListNodesResponse(
            nodes=[
                admin_pb.Node(
                    node_id=n.node_id,
                    address=n.address,
                    session_ids=n.session_ids,
                    capacity=n.capacity,
                    pool=n.pool,
                    last_heartbeat_time=convert.timestamp(n.heartbeat_us),
                )
                for n in rows
            ]
        )

    async def MoveSession(self, request: admin_pb.MoveSessionRequest, context) -> admin_pb.MoveSessionResponse:
        sid = check_id(request.session_id, "session_id")
        target = request.target_node_id or "any"
        if target != "any":
            check_id(target, "target_node_id")
        chosen, previous = await asyncio.to_thread(self.vault.move_session, current_principal(), sid, target)
        return admin_pb.MoveSessionResponse(target_node_id=chosen, previous_node_id=previous)
