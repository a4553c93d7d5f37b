"""The gateway's state and its rules: clients, authorization, audit, the sender, invoke.

The routes (``messaging/gateway/app.py``) call these; refusals raise ``HTTPException``
and are audited here, and an invoke that times out raises ``InvokeTimeout``.
"""

from __future__ import annotations

import threading
import time
from typing import NoReturn

import anyio
import anyio.to_thread
from fastapi import HTTPException

import storage
from messaging.client import Client
from messaging.gateway.auth import Authenticator, Operation, Principal, check_gateway_settings
from messaging.gateway.inflight import InFlight
from messaging.gateway.models import AgentInvocationRequest, AgentInvocationResponse
from messaging.gateway.ratelimit import RateLimiter
from messaging.gateway.refusals import Refusals
from messaging.results import MessageState
from wire.boundary import store_errors
from wire.errors import RequestFailed, RequestTimeout
from wire.settings import Settings

__all__ = ["Gateway", "InvokeTimeout", "scoped_key"]

_REFUSED = ("denied", "limited")


class Gateway:
    """The gateway's state: settings, per-thread clients, authenticator, limiter."""

    def __init__(self, settings: Settings) -> None:
        check_gateway_settings(settings)
        self.settings = settings
        self.engine = storage.engine_for(settings.database)
        with store_errors(settings.database):
            storage.create_schema(self.engine)
        self.auth = Authenticator(settings, self.engine)
        self.limiter = RateLimiter(settings)
        self.refusals = Refusals(settings, self.engine)
        self.in_flight = InFlight(settings.gateway_max_in_flight)
        self._local = threading.local()
        self._wait_limiter: anyio.CapacityLimiter | None = None

    async def invoke_in_thread(
        self, principal: Principal, agent: str, body: AgentInvocationRequest
    ) -> AgentInvocationResponse:
        """``invoke`` on a thread of the wait pool: blocking invokes never hold the
        threads that authenticate and answer everything else."""
        if self._wait_limiter is None:  # made in the event loop, on first use
            self._wait_limiter = anyio.CapacityLimiter(self.settings.gateway_wait_threads)
        return await anyio.to_thread.run_sync(
            self.invoke, principal, agent, body, limiter=self._wait_limiter
        )

    @property
    def client(self) -> Client:
        # One client per server thread: a Client holds broker connections.
        client: Client | None = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = Client(self.settings)
        return client

    def audit(
        self,
        subject: str,
        action: str,
        outcome: str,
        *,
        agent: str | None = None,
        message_id: str | None = None,
        detail: str | None = None,
    ) -> None:
        """Record what a caller did; refusals are aggregated per window (``Refusals``)."""
        if outcome in _REFUSED:
            self.refusals.record(subject, action, outcome, agent=agent, detail=detail)
            return
        with store_errors(self.settings.database):
            storage.record_audit(
                self.engine,
                storage.AuditEntry(
                    at=time.time(),
                    subject=subject,
                    action=action,
                    agent=agent,
                    message_id=message_id,
                    outcome=outcome,
                    detail=detail,
                ),
            )

    def require(self, principal: Principal, operation: Operation, agent: str) -> None:
        """403 (audited) unless ``principal`` may do ``operation`` on ``agent``."""
        if not principal.may(operation, agent):
            self.deny(principal, operation, agent)

    def deny(self, principal: Principal, operation: Operation, agent: str) -> NoReturn:
        """Refuse with 403, and audit the refusal."""
        self.audit(principal.subject, operation, "denied", agent=agent, detail="forbidden")
        raise HTTPException(403, f"{principal.subject!r} may not {operation} {agent!r}")

    def sender(self, principal: Principal, claimed: str | None, action: str, agent: str) -> str:
        """The envelope's sender: the subject; a body claiming another is refused."""
        if principal.via == "allow_all":
            return claimed or principal.subject
        if claimed is not None and claimed != principal.subject:
            self.audit(principal.subject, action, "denied", agent=agent, detail="spoofed sender")
            raise HTTPException(
                403,
                f"source_agent {claimed!r} is not the authenticated caller {principal.subject!r}",
            )
        return principal.subject

    def may_read(self, principal: Principal, state: MessageState) -> bool:
        """Read your own messages, or those sent to agents you may read."""
        return "read" in principal.operations and (
            state.sender == principal.subject or principal.may("read", state.receiver)
        )

    def require_own_chain(self, sender: str, correlation_id: str | None) -> None:
        """Refuse (403) joining a correlation chain that another sender started."""
        if not correlation_id:
            return
        with store_errors(self.settings.database):
            starter = storage.chain_starter(self.engine, correlation_id)
        if starter is not None and starter != sender:
            self.audit(sender, "chain", "denied", detail=correlation_id[:200])
            raise HTTPException(
                403,
                f"correlation {correlation_id!r} is another sender's chain: "
                "start one of your own (or leave correlation_id out)",
            )

    def invoke(
        self, principal: Principal, agent: str, body: AgentInvocationRequest
    ) -> AgentInvocationResponse:
        """Send through the bus and wait for the reply (504 with the id on timeout)."""
        self.require(principal, "invoke", agent)
        if body.target_agent is not None and body.target_agent != agent:
            raise HTTPException(
                422, f"target_agent {body.target_agent!r} is not the agent in the path {agent!r}"
            )
        sender = self.sender(principal, body.source_agent, "invoke", agent)
        self.require_own_chain(sender, body.correlation_id or body.conversation_id)
        timeout_s = min(body.timeout_s, self.settings.gateway_max_timeout_s)
        context = {
            "run_id": body.run_id,
            "thread_id": body.thread_id,
            "conversation_id": body.conversation_id,
        }
        metadata = {**body.metadata, **{k: v for k, v in context.items() if v is not None}}
        try:
            reply = self.client.request(
                agent,
                body.payload,
                sender=sender,
                timeout_s=timeout_s,
                correlation_id=body.correlation_id or body.conversation_id,
                idempotency_key=scoped_key(principal, body.idempotency_key),
                metadata=metadata,
            )
        except RequestTimeout as exc:
            self.audit(sender, "invoke", "timeout", agent=agent, message_id=exc.message_id)
            raise InvokeTimeout(
                f"{exc}: follow it with GET /v1/messages/{exc.message_id}", exc.message_id
            ) from None
        except RequestFailed as exc:
            self.audit(sender, "invoke", "failed", agent=agent, message_id=exc.message_id)
            return AgentInvocationResponse(
                run_id=body.run_id, success=False, error=str(exc), message_id=exc.message_id
            )
        self.audit(sender, "invoke", "ok", agent=agent, message_id=reply.parent_id)
        return AgentInvocationResponse(
            run_id=body.run_id, success=True, output=reply.payload, message_id=reply.parent_id
        )


class InvokeTimeout(Exception):
    """No reply in time: the route answers 504 with the message id."""

    def __init__(self, detail: str, message_id: str) -> None:
        super().__init__(detail)
        self.message_id = message_id


def scoped_key(principal: Principal, key: str | None) -> str | None:
    """The bus key of a caller's idempotency key."""
    # Keys are per caller: another caller's key must not return this caller's result.
    return None if key is None else f"{principal.subject}:{key}"
