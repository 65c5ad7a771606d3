"""Public names: how tools and prompts of several upstreams share one namespace."""

from __future__ import annotations


class Names:
    """Maps `(upstream, own name)` to the name a client sees, and back."""

    def __init__(self, upstreams: list[str], separator: str = ".", prefixed: bool = True) -> None:
        self.upstreams = list(upstreams)
        self.separator = separator
        self.prefixed = prefixed
        # Longest first, so "a.b" wins over "a" when both are upstream names.
        self._by_length = sorted(self.upstreams, key=len, reverse=True)

    def public(self, upstream: str, name: str) -> str:
        """The name a client sees for `name` on `upstream`."""
        return f"{upstream}{self.separator}{name}" if self.prefixed else name

    def resolve(self, public: str) -> tuple[str, str] | None:
        """`(upstream, own name)` for a public name, or None when no upstream owns it."""
        if not self.prefixed:
            return (self.upstreams[0], public) if self.upstreams else None
        for upstream in self._by_length:
            prefix = upstream + self.separator
            if public.startswith(prefix) and len(public) > len(prefix):
                return upstream, public[len(prefix) :]
        return None
