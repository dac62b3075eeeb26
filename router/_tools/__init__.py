"""The tools: everything ``llm-router`` runs, apart from the router it runs.

==================  ===================================================================
``_cli``            the ``llm-router`` command line: parsing, exit statuses, one-line
                    errors (``python -m router`` runs it too)
``_commands``       what ``chat``, ``health`` and ``models`` do
``_demo``           ``demo``: hedging against plain fallback on the fake upstream
``_simulate``       ``simulate``: route policies against a scenario in virtual time
                    (public as :func:`router.testing.simulate`)
``_bench``          ``bench``: the router against bare httpx and a direct call
``_chaos``          ``chaos``: a seeded fault mix, every guarantee checked
``_gateway``        ``serve``: the OpenAI- and Anthropic-compatible gateway (ASGI), with
                    its dialects ``_gateway_openai``, ``_gateway_anthropic`` and their
                    shared ``_gateway_wire``; public as :mod:`router.gateway`
``_serve``          ``serve``: the gateway on hypercorn's trio worker, signals, drain
``_format``         the one percentile and the one table renderer they all print with
==================  ===================================================================

The dependency points one way: the tools use the router through its public API
(``from router import open_router, ...``, :mod:`providers`, :mod:`providers.testing`),
and no core module imports a tool, so ``import router`` loads none of them.  Only
:mod:`router.testing` (which re-exports the simulator) and ``router/__main__.py``
reach in here, and :mod:`router.gateway` (which ``import router`` does not load).
The few internals a tool needs are imported by name at the top of its module, with
the reason; ``tests/test_tools.py`` holds all of this to the letter.

Nothing here is public API (hence ``_tools``): the ``llm-router`` commands and
:func:`router.testing.simulate` are the interface.
"""
