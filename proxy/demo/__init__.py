"""The demo shipped with signoff (`signoff demo`): a jobs MCP server, a scripted agent, their configs."""
