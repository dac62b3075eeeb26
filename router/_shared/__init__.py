"""Limits shared by several processes, on Redis (``[shared]``; docs/scaling.md).

Imported only when ``[shared]`` is configured (it needs coredis, the ``shared`` extra):
without it the router never imports this package's Redis modules.

=================  ====================================================================
``_client.py``     :class:`SharedClient`: the coredis client, the key prefix, the time
                   bound on every operation, shared/local state, reconnection with
                   backoff, heartbeats (the count of live processes), Lua scripts
``_limits.py``     :class:`ProviderGate`: one provider's RPM/TPM (GCRA), concurrency
                   leases and pauses, asked by the provider's mailbox
``_stats.py``      :class:`SharedStatistics` (importable without coredis)
``_gcra.py``       the GCRA step in Python: the model ``gcra.lua`` is tested against
``gcra.lua``       the GCRA step, prepended to the scripts that need it
``admit.lua``      releases, then a FIFO batch of admissions: one round trip
``renew.lua``      lease renewal;  ``heartbeat.lua`` live processes;  ``pause.lua``
``_breaker.py``    :class:`SharedBreaker` (``breaker.lua``, ``probe.lua``)
``_budgets.py``    :class:`SharedBudgets`: spend caps (``budget.lua``)
``_replies.py``    checked readers of script replies: :class:`MalformedReply`, which
                   the caller turns into a switch to local limits (:func:`refuse`)
=================  ====================================================================

Adding a shared concern (breaker state, budgets): a module here with its scripts; a
listener registered with :meth:`SharedClient.add_listener` hears each switch between
shared and local and each heartbeat; every operation goes through
:meth:`SharedClient.call`, which bounds it and switches to local on failure.  Its
reply is read with ``_replies`` (a malformed one is a failure too, never a crash), and
its scripts replace a key of another type rather than fail on it (``redis.pcall`` of
the key's first command, not a ``TYPE`` per call: docs/scaling.md).
"""
