"""An agent as a Google A2A agent: the real a2a-sdk client against a real gateway.

The gateway (``agentpost serve``) runs on Redis + PostgreSQL with a worker serving
``echo``, whose handler answers with the payload it got.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
from a2a.client import A2ACardResolver, A2AClientError, ClientConfig, ClientFactory
from a2a.helpers import get_data_parts, new_data_part
from a2a.types.a2a_pb2 import AgentCard, Message, Role, SendMessageRequest, StreamResponse

from tests.conftest import Backend

pytestmark = pytest.mark.slow


def message(data: Any) -> SendMessageRequest:
    return SendMessageRequest(
        message=Message(
            role=Role.ROLE_USER, message_id=str(uuid.uuid4()), parts=[new_data_part(data)]
        )
    )


async def card_of(agent_url: str, headers: dict[str, str]) -> tuple[AgentCard, str, int]:
    async with httpx.AsyncClient(timeout=30) as http:
        anonymous = await http.get(f"{agent_url}/.well-known/agent-card.json")
        http.headers.update(headers)
        raw = (await http.get(f"{agent_url}/.well-known/agent-card.json")).text
        return await A2ACardResolver(http, agent_url).get_agent_card(), raw, anonymous.status_code


async def send(card: AgentCard, headers: dict[str, str], data: Any) -> list[StreamResponse]:
    async with httpx.AsyncClient(headers=headers, timeout=60) as http:
        client = ClientFactory(ClientConfig(httpx_client=http)).create(card)
        return [response async for response in client.send_message(message(data))]


@pytest.mark.parametrize("backend", ["redis"], indirect=True)
def test_an_agent_answers_the_a2a_sdk_client(backend: Backend, gateway: Any) -> None:
    agent_url = f"{gateway.url}/a2a/echo"

    # Given echo's card, resolved by the SDK with the key (like every path, the card
    # needs credentials)
    card, raw, anonymous = asyncio.run(card_of(agent_url, {"X-API-Key": gateway.api_key}))
    assert anonymous == 401
    assert card.name == "echo"
    # It points the client at our JSON-RPC endpoint and names both ways to authenticate
    assert {i.url for i in card.supported_interfaces} == {agent_url}
    assert card.security_schemes["apiKey"].api_key_security_scheme.name == "X-API-Key"
    assert card.security_schemes["bearer"].http_auth_security_scheme.scheme == "bearer"
    assert gateway.api_key not in raw

    # When the SDK client sends a data part with the key
    replies = asyncio.run(send(card, {"X-API-Key": gateway.api_key}, {"n": 7}))

    # Then the agent's reply comes back as one message from the agent
    assert len(replies) == 1 and replies[0].HasField("message")
    reply = replies[0].message
    assert reply.role == Role.ROLE_AGENT
    assert get_data_parts(reply.parts) == [{"n": 7}]
    assert reply.metadata["agentpost_message_id"]  # our bus message id, for tracing

    # And the key as a bearer token works the same
    replies = asyncio.run(send(card, {"Authorization": f"Bearer {gateway.api_key}"}, {"n": 8}))
    assert get_data_parts(replies[0].message.parts) == [{"n": 8}]

    # But without a key the call is refused with 401
    with pytest.raises(A2AClientError) as refused:
        asyncio.run(send(card, {}, {"n": 9}))
    cause = refused.value.__cause__
    assert isinstance(cause, httpx.HTTPStatusError)
    assert cause.response.status_code == 401
