"""The demo's on-call people, alice and bob, each with a token made for this run.

Only the tokens' SHA-256 goes into the config the gateway reads; the tokens themselves are printed
once, as sign-in links, on the demo's own terminal.
"""

from __future__ import annotations

from typing import Any

from proxy.tokens import digest, new_token

NAMES = ("alice", "bob")


def demo_people() -> tuple[dict[str, Any], dict[str, str]]:
    """(the config's `people:` section, each person's token)."""
    tokens = {name: new_token() for name in NAMES}
    people = {
        name: {"token_sha256": digest(token), "email": f"{name}@example.com"}
        for name, token in tokens.items()
    }
    return people, tokens


def sign_in_link(page_url: str, token: str) -> str:
    """A link that signs the page in as the token's owner (browsers never send the fragment anywhere)."""
    return f"{page_url}#signin={token}"
