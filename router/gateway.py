"""The gateway: the router over HTTP, in OpenAI's and Anthropic's wire formats.

``llm-router serve`` runs it; this module is the same gateway for a Python program that
opens its own router (docs/gateway.md).  Not imported by ``import router``: importing
it loads the gateway's translation code, and :func:`serve_gateway` imports hypercorn
(the ``gateway`` extra) when it starts serving.

=========================  ================================================================
:class:`GatewayApp`        the ASGI application over one open router
:func:`serve_gateway`      serve it on hypercorn's trio worker until a shutdown trigger,
                           then drain in-flight requests for a grace period
:class:`GatewayTransport`  the same endpoints in process, as an ``httpx`` (and ``httpx2``)
                           transport: the OpenAI and Anthropic SDKs without a server
=========================  ================================================================

Example::

    from router import open_router
    from router.gateway import GatewayApp, serve_gateway

    async with open_router(config) as router, trio.open_nursery() as nursery:
        url = await nursery.start(serve_gateway, GatewayApp(router, config))
        print("listening on", url)
"""

from ._tools._gateway import GatewayApp as GatewayApp
from ._tools._gateway_transport import GatewayTransport as GatewayTransport
from ._tools._serve import serve_gateway as serve_gateway

__all__ = ["GatewayApp", "GatewayTransport", "serve_gateway"]
