"""The MCP edge: everything that speaks MCP through the SDK, on both sides of the gateway.

Agents' side: the Streamable HTTP app and its lean path, the stdio front, bearer-token auth, client
sessions, resumable streams. Upstreams' side: supervised links (the SDK's client, or a raw JSON-RPC
pipe to a stdio server). Nothing outside this package (and the demo) imports the SDK; the core —
stages, pipeline, policy, approvals, records — sees plain calls, dicts and `Upstream` objects.
"""
