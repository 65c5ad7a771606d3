"""The demo shipped with signoff (`signoff demo`): a jobs MCP server, a scripted agent, the gateway's config."""
