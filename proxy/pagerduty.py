"""PagerDuty: who is on call now (REST API v2) and incidents for requests that wait (Events API v2).

The REST API authenticates with `Authorization: Token token=<key>`; the Events API with the
integration's `routing_key` in the body. Both base URLs come from the config, so tests point them at
a fake on 127.0.0.1. Neither secret ever appears in a message or a log line.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from proxy.config import PagerDutyConfig

log = logging.getLogger("signoff.pagerduty")

_PAGE = 100  # on-call entries per request (PagerDuty's maximum)
_MAX_PAGES = 10
EVENTS_BUDGET = 10.0  # seconds an event may take, retries included, before it is given up (and logged)


class PagerDutyError(Exception):
    """PagerDuty could not be asked, or answered with an error (the text says which, never a secret)."""


@dataclass(frozen=True, slots=True)
class OnCallUser:
    """Someone PagerDuty says is on call now."""

    email: str
    name: str
    level: int = 1  # the escalation level; 1 is paged first


class PagerDuty:
    """A small PagerDuty client: on-call lookups (cached for seconds) and Events API v2 events."""

    def __init__(
        self,
        config: PagerDutyConfig,
        api_token: str | None,
        routing_key: str | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._token = api_token
        self._routing_key = routing_key
        self._clock = clock
        self._cache: dict[tuple[str, str], tuple[float, list[OnCallUser]]] = {}
        self._http: aiohttp.ClientSession | None = None

    @property
    def can_page(self) -> bool:
        """Whether incidents can be triggered (a routing key is configured)."""
        return self._routing_key is not None

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            # No trust_env: a proxy from the environment must not see (or break) these requests.
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.config.timeout))
        return self._http

    # -- who is on call ------------------------------------------------------------------------

    async def on_call(self, kind: str, target: str, *, fresh: bool = False) -> list[OnCallUser]:
        """Who is on call now in schedule (`kind` "schedule") or escalation policy `target`.

        An answer younger than `on_call_cache` seconds is reused unless `fresh`. Raises PagerDutyError.
        """
        key = (kind, target)
        cached = self._cache.get(key)
        if not fresh and cached is not None and self._clock() - cached[0] < self.config.on_call_cache:
            return cached[1]
        users = await self._fetch_on_call(kind, target)
        self._cache[key] = (self._clock(), users)
        return users

    async def _fetch_on_call(self, kind: str, target: str) -> list[OnCallUser]:
        if self._token is None:
            raise PagerDutyError("no PagerDuty API token is configured (pagerduty.api_token_env)")
        headers = {
            "Authorization": f"Token token={self._token}",
            "Accept": "application/vnd.pagerduty+json;version=2",
        }
        found: dict[str, OnCallUser] = {}
        offset = 0
        for _ in range(_MAX_PAGES):
            params = [
                (f"{kind}_ids[]", target),
                ("include[]", "users"),
                ("limit", str(_PAGE)),
                ("offset", str(offset)),
            ]
            body = await self._get_json(f"{self.config.api_url}/oncalls", params, headers)
            for entry in body.get("oncalls") or []:
                user = _on_call_user(entry)
                if user is not None and (user.email not in found or user.level < found[user.email].level):
                    found[user.email] = user
            if not body.get("more"):
                break
            offset += _PAGE
        return sorted(found.values(), key=lambda u: (u.level, u.name))

    async def _get_json(self, url: str, params: list[tuple[str, str]], headers: dict[str, str]) -> Any:
        try:
            async with self._session().get(url, params=params, headers=headers) as r:
                if r.status != 200:
                    raise PagerDutyError(f"PagerDuty answered HTTP {r.status}{await _error_text(r)}")
                body = await r.json(content_type=None)
        except PagerDutyError:
            raise
        except TimeoutError:
            raise PagerDutyError(f"PagerDuty did not answer within {self.config.timeout:g}s") from None
        except (aiohttp.ClientError, OSError, ValueError) as e:
            raise PagerDutyError(f"cannot reach PagerDuty at {_host(url)}: {_describe(e)}") from None
        if not isinstance(body, dict):
            raise PagerDutyError("PagerDuty answered something other than a JSON object")
        return body

    # -- events --------------------------------------------------------------------------------

    async def send_event(self, event: dict[str, Any], budget: float = EVENTS_BUDGET) -> None:
        """Send one Events API v2 event (the routing key is added here), retrying briefly.

        Connection errors, 429 and 5xx are retried within `budget` seconds; raises PagerDutyError
        when the event could not be delivered.
        """
        if self._routing_key is None:
            raise PagerDutyError("no Events API routing key is configured (pagerduty.routing_key_env)")
        body = {"routing_key": self._routing_key, **event}
        url = f"{self.config.events_url}/v2/enqueue"
        deadline = time.monotonic() + budget
        attempt = 0
        while True:
            attempt += 1
            try:
                async with self._session().post(url, json=body) as r:
                    if r.status in (200, 201, 202):
                        return
                    why = f"HTTP {r.status}{await _error_text(r)}"
                    if r.status != 429 and r.status < 500:
                        raise PagerDutyError(f"PagerDuty refused the event: {why}")
                    delay = (
                        _retry_after(r.headers.get("Retry-After")) if r.status == 429 else _backoff(attempt)
                    )
            except PagerDutyError:
                raise
            except (aiohttp.ClientError, OSError, TimeoutError) as e:
                why, delay = f"cannot reach {_host(url)}: {_describe(e)}", _backoff(attempt)
            if time.monotonic() + delay >= deadline:
                raise PagerDutyError(f"event not delivered after {attempt} attempt(s): {why}")
            log.warning("PagerDuty event %s: %s; retrying in %.1fs", event.get("event_action"), why, delay)
            await asyncio.sleep(delay)


def _on_call_user(entry: Any) -> OnCallUser | None:
    """The user of one `oncalls[]` entry (with `include[]=users` it carries the email)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("user"), dict):
        return None
    user = entry["user"]
    email = str(user.get("email") or "").strip().lower()
    if not email:
        return None
    level = entry.get("escalation_level")
    return OnCallUser(
        email=email,
        name=str(user.get("name") or user.get("summary") or email),
        level=level if isinstance(level, int) else 1,
    )


async def _error_text(r: aiohttp.ClientResponse) -> str:
    """PagerDuty's own error message, if it gave one (`{"error": {"message": …}}`)."""
    try:
        body = await r.json(content_type=None)
    except Exception:
        return ""
    error = body.get("error") if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else error
    return f": {str(message)[:200]}" if message else ""


def _retry_after(value: str | None) -> float:
    try:
        return max(0.1, min(float(value or 1), 5.0))
    except ValueError:
        return 1.0


def _backoff(attempt: int) -> float:
    """0.5 s, 1 s, 2 s, 2 s…, jittered so replicas do not retry in step."""
    return min(2.0, 0.5 * 2 ** (attempt - 1)) * random.uniform(0.8, 1.2)


def _host(url: str) -> str:
    return urlsplit(url).netloc


def _describe(e: BaseException) -> str:
    text = str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
