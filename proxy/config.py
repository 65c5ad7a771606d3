"""The gateway's configuration file: one YAML (or JSON) document validated by pydantic.

`${VAR}` and `${VAR:-default}` in any string are replaced from the environment before
validation, so secrets stay out of the file. Every problem is reported as
`path.to.field: what is wrong`.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from proxy.duration import Duration


class ConfigError(ValueError):
    """An invalid configuration; `errors` lists every problem as `path: message`."""

    def __init__(self, errors: list[str], source: str = "config") -> None:
        self.errors = errors
        self.source = source
        super().__init__(f"{source} is invalid:\n" + "\n".join(f"  {e}" for e in errors))


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UpstreamConfig(_Model):
    """One upstream MCP server: a stdio command or a Streamable HTTP URL."""

    command: str | None = None
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    url: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    policy: str | dict[str, Any] | None = None
    call_timeout: Duration = 300.0
    connect_timeout: Duration = 30.0
    # "auto": a client session that can receive server->client requests (sampling, elicitation,
    # roots) gets its own upstream connection so those requests reach the client that caused them.
    sessions: Literal["auto", "shared", "per_client"] = "auto"
    # A tool whose definition changed since signoff pinned it (proxy.pins), until an admin accepts it:
    # hidden from agents, or every call needs approval.
    on_tool_change: Literal["hide", "require_approval"] = "require_approval"

    @model_validator(mode="after")
    def _one_transport(self) -> UpstreamConfig:
        if (self.command is None) == (self.url is None):
            raise ValueError("give exactly one of `command` (stdio) or `url` (Streamable HTTP)")
        if self.url is not None and not re.match(r"^https?://", self.url):
            raise ValueError(f"url must start with http:// or https://, got {self.url!r}")
        if self.url is None and self.headers:
            raise ValueError("`headers` only apply to an HTTP upstream (`url`)")
        return self


class ListenConfig(_Model):
    host: str = "127.0.0.1"
    port: int = Field(default=8765, ge=0, le=65535)
    path: str = "/mcp"
    json_response: bool = False
    # Beyond loopback, a front without identities would let anyone on the network call tools.
    allow_anonymous: bool = False


class ControlConfig(_Model):
    host: str = "127.0.0.1"
    port: int = Field(default=8766, ge=0, le=65535)
    # Lets its holder view requests and the audit (never decide); `${SIGNOFF_ADMIN_TOKEN}` by convention.
    admin_token: str | None = None
    # How the page is reached from a browser (links, the OpenID Connect redirect); default http://host:port.
    public_url: str | None = None
    # A page sign-in ends after this long without use (and after `session_max` in any case).
    session_idle: Duration = 900.0
    session_max: Duration = 43200.0

    @field_validator("public_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https?://[^/]+", v):
            raise ValueError(f"must be an http:// or https:// URL, got {v!r}")
        return v.rstrip("/") if v else v


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _sha256_hex(v: str | None) -> str | None:
    if v is not None and not re.fullmatch(r"(sha256:)?[0-9a-fA-F]{64}", v):
        raise ValueError("must be 64 hex digits (the SHA-256 of the token), optionally prefixed sha256:")
    return v.removeprefix("sha256:").lower() if v else v


TokenHash = Annotated[str | None, AfterValidator(_sha256_hex)]


class IdentityConfig(_Model):
    """A caller: its bearer token (an environment variable or a SHA-256), groups, who it acts for."""

    token_env: str | None = None
    token_sha256: TokenHash = None
    groups: list[str] = Field(default_factory=list)
    # The human the agent acts for, who therefore cannot approve its calls: a person's name…
    acts_for: str | None = None
    # …or, as before `people`, their Slack user ID.
    slack_user: str | None = None

    @model_validator(mode="after")
    def _has_token(self) -> IdentityConfig:
        if self.token_env is None and self.token_sha256 is None:
            raise ValueError("give `token_env` (an environment variable holding the token) or `token_sha256`")
        return self


class PersonConfig(_Model):
    """A human who decides, with their own credential: a token, a Slack user, an email (SSO)."""

    token_env: str | None = None
    token_sha256: TokenHash = None
    slack_user: str | None = None
    email: str | None = None

    @model_validator(mode="after")
    def _can_sign_in(self) -> PersonConfig:
        if not (self.token_env or self.token_sha256 or self.slack_user or self.email):
            raise ValueError(
                "a person needs a way to prove who they are: `token_env` or `token_sha256` (page and CLI), "
                "`slack_user` (Slack) and/or `email` (OpenID Connect sign-in)"
            )
        return self


class ApproverGroupConfig(_Model):
    """Who may decide: people by name, Slack user IDs and/or a Slack user group (via the Web API).

    With a PagerDuty schedule (or escalation policy), `on_call_only` says whether only the member on
    call at the moment of the click decides: `true` (the default; PagerDuty unreachable refuses the
    click), `prefer` (PagerDuty unreachable or naming nobody of the group: any member decides) or
    `false` (PagerDuty only names who is on call in the message).
    """

    people: list[str] = Field(default_factory=list)
    users: list[str] = Field(default_factory=list)
    usergroup: str | None = None
    pagerduty_schedule: str | None = None
    pagerduty_escalation_policy: str | None = None
    on_call_only: Literal[True, False, "prefer"] | None = None

    @model_validator(mode="after")
    def _someone(self) -> ApproverGroupConfig:
        if not self.people and not self.users and not self.usergroup:
            raise ValueError("an approver group needs `people`, `users` (Slack user IDs) and/or `usergroup`")
        if self.pagerduty_schedule and self.pagerduty_escalation_policy:
            raise ValueError("give `pagerduty_schedule` or `pagerduty_escalation_policy`, not both")
        if self.on_call_only not in (None, False) and self.pagerduty_target is None:
            raise ValueError("`on_call_only` needs `pagerduty_schedule` or `pagerduty_escalation_policy`")
        return self

    @property
    def pagerduty_target(self) -> tuple[str, str] | None:
        """("schedule" | "escalation_policy", id) when the group follows PagerDuty."""
        if self.pagerduty_schedule:
            return "schedule", self.pagerduty_schedule
        if self.pagerduty_escalation_policy:
            return "escalation_policy", self.pagerduty_escalation_policy
        return None

    @property
    def on_call_rule(self) -> Literal["only", "prefer", "off"]:
        """How being on call counts; a group following PagerDuty defaults to "only" (fail closed)."""
        if self.pagerduty_target is None or self.on_call_only is False:
            return "off"
        return "prefer" if self.on_call_only == "prefer" else "only"


def _http_base(value: str) -> str:
    """An https:// base URL (plain http only on loopback, for tests), without a trailing slash."""
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"must be an https:// URL, got {value!r}")
    if parts.scheme == "http" and not _loopback(parts.hostname):
        raise ValueError("must use https (plain http is accepted only for 127.0.0.1 / localhost)")
    return value.rstrip("/")


BaseUrl = Annotated[str, AfterValidator(_http_base)]


class PagerDutyConfig(_Model):
    """PagerDuty: the REST API says who is on call; the Events API v2 pages when a request waits too long."""

    api_token_env: str | None = None  # a REST API key (read-only is enough)
    api_url: BaseUrl = "https://api.pagerduty.com"
    events_url: BaseUrl = "https://events.pagerduty.com"
    routing_key_env: str | None = None  # an Events API v2 integration key, for escalation incidents
    # How long an answer about who is on call is trusted: seconds, so a handover shows up quickly.
    on_call_cache: Duration = 10.0
    timeout: Duration = 5.0

    def api_token(self, env: Mapping[str, str] | None = None) -> str | None:
        """The REST API token from `api_token_env` (None when not configured); unset is an error."""
        return _from_env("pagerduty.api_token_env", self.api_token_env, env)

    def routing_key(self, env: Mapping[str, str] | None = None) -> str | None:
        """The Events API routing key from `routing_key_env` (None when not configured); unset is an error."""
        return _from_env("pagerduty.routing_key_env", self.routing_key_env, env)


def _from_env(field: str, name: str | None, env: Mapping[str, str] | None) -> str | None:
    if name is None:
        return None
    value = (os.environ if env is None else env).get(name)
    if not value:
        raise ConfigError([f"{field}: environment variable {name} is not set"])
    return value


class OidcConfig(_Model):
    """Single sign-on for the approvals page: an OpenID provider whose `claim` names the person."""

    issuer: str
    client_id: str
    client_secret_env: str | None = None  # None: a public client (PKCE only)
    claim: str = "email"  # the claim that names the person
    scopes: list[str] = Field(default_factory=lambda: ["openid", "email", "profile"])
    redirect_url: str | None = None  # the externally visible callback URL; default: from the control port

    @field_validator("issuer")
    @classmethod
    def _https_issuer(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError("must be an https:// URL")
        if parts.scheme == "http" and not _loopback(parts.hostname):
            raise ValueError("must use https (plain http is accepted only for 127.0.0.1 / localhost)")
        if parts.query or parts.fragment:
            raise ValueError("must not have a query or fragment")
        return value

    @field_validator("scopes")
    @classmethod
    def _openid_scope(cls, value: list[str]) -> list[str]:
        if "openid" not in value:
            raise ValueError("must include 'openid'")
        return value

    def secret(self, env: Mapping[str, str] | None = None) -> str | None:
        """The client secret from `client_secret_env` (None for a public client); unset is an error."""
        if self.client_secret_env is None:
            return None
        value = (os.environ if env is None else env).get(self.client_secret_env)
        if not value:
            raise ConfigError(
                [f"oidc.client_secret_env: environment variable {self.client_secret_env} is not set"]
            )
        return value


class AuditConfig(_Model):
    enabled: bool = True
    flush_interval: Duration = 0.2
    batch_size: int = Field(default=500, ge=1)
    # Fail calls closed when the audit log cannot be written (default: keep serving, log loudly).
    fail_closed: bool = False


def _upstream_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise ValueError(f"upstream name {name!r} may only contain letters, digits, '_' and '-'")
    return name


UpstreamName = Annotated[str, AfterValidator(_upstream_name)]


class ApprovalsConfig(_Model):
    # How often a held call reports progress ("waiting for approval in #ops (9m left)") to its client.
    progress_interval: Duration = 5.0
    # Seconds after which another process's missing heartbeat means its held calls died with it.
    heartbeat_timeout: Duration = 10.0
    # A held HTTP call whose response stream closed counts as abandoned (withdrawn, never run) unless
    # its client resumes the stream (GET with Last-Event-ID) within this long.
    reconnect_grace: Duration = 10.0


class Config(_Model):
    """The whole configuration file."""

    upstreams: dict[UpstreamName, UpstreamConfig] = Field(min_length=1)
    tool_separator: str = Field(default=".", min_length=1)
    prefix_single_upstream: bool = False
    listen: ListenConfig = Field(default_factory=ListenConfig)
    control: ControlConfig = Field(default_factory=ControlConfig)
    database_url: str = "sqlite+aiosqlite:///signoff.db"
    policy: str | dict[str, Any] | None = None
    # Approval channels (plugins, `proxy.channels`): each section is checked by its plugin's own model.
    slack: dict[str, Any] | None = None
    channels: dict[str, dict[str, Any]] = Field(default_factory=dict)
    identities: dict[str, IdentityConfig] = Field(default_factory=dict)
    stdio_identity: str | None = None
    people: dict[str, PersonConfig] = Field(default_factory=dict)
    approvers: dict[str, ApproverGroupConfig] = Field(default_factory=dict)
    oidc: OidcConfig | None = None
    pagerduty: PagerDutyConfig | None = None
    audit: AuditConfig = Field(default_factory=AuditConfig)
    approvals: ApprovalsConfig = Field(default_factory=ApprovalsConfig)
    max_argument_bytes: int = Field(default=4 * 1024 * 1024, ge=1)
    # A client session's private upstream connection closes after this long unused (see upstreams.sessions).
    private_link_idle: Duration = 120.0
    replica: str | None = None

    # Where relative paths (policy files, stdio cwd) are resolved; set by `load_config`.
    base_dir: Path = Field(default=Path("."), exclude=True)

    @property
    def prefixed(self) -> bool:
        """Whether tool and prompt names carry the upstream name."""
        return len(self.upstreams) > 1 or self.prefix_single_upstream


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(data: Any, env: dict[str, str], path: str = "", errors: list[str] | None = None) -> Any:
    """Replace `${VAR}` / `${VAR:-default}` in every string of `data`; unset variables become errors."""
    errors = [] if errors is None else errors
    if isinstance(data, str):

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            errors.append(f"{path or '(root)'}: environment variable {name} is not set")
            return ""

        return _VAR.sub(sub, data)
    if isinstance(data, dict):
        return {k: expand_env(v, env, f"{path}.{k}" if path else str(k), errors) for k, v in data.items()}
    if isinstance(data, list):
        return [expand_env(v, env, f"{path}.{i}" if path else str(i), errors) for i, v in enumerate(data)]
    return data


def format_validation_error(exc: ValidationError) -> list[str]:
    """Turn pydantic's errors into `path.to.field: message` lines."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-after") and p != "[key]")
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{loc or '(root)'}: {msg}")
    return lines


MAX_DOCUMENT_VALUES = 100_000


class _StrictLoader(yaml.SafeLoader):
    """Safe YAML that refuses a key given twice in one mapping (the later one would silently win)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may be overridden on purpose
                continue
            key = self.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
            if isinstance(key, (str, int, float, bool)) or key is None:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}", key_node.start_mark
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _yaml_problem(e: yaml.YAMLError) -> str:
    """The parser's complaint and where, without the echoed line (the file may not be ours to print)."""
    if isinstance(e, yaml.MarkedYAMLError) and e.problem_mark is not None:
        where = f"{e.problem} (line {e.problem_mark.line + 1}, column {e.problem_mark.column + 1})"
        if e.context and e.context_mark is not None:
            where = (
                f"{e.context} (line {e.context_mark.line + 1}, column {e.context_mark.column + 1}): {where}"
            )
        return where
    return getattr(e, "problem", None) or type(e).__name__


def _load_yaml(text: str) -> Any:
    """Parse YAML safely and strictly: duplicate keys are an error, not a silent override."""
    return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader: no arbitrary objects


def read_document(path: Path) -> Any:
    """Read a YAML or JSON file; every way it can be unreadable becomes a ConfigError saying why."""
    kind = "JSON" if path.suffix == ".json" else "YAML"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError([f"{path}: cannot read ({e.strerror})"], str(path)) from None
    except UnicodeDecodeError as e:
        raise ConfigError([f"{path}: not UTF-8 text (byte {e.start})"], str(path)) from None
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicate_keys) if kind == "JSON" else _load_yaml(text)
    except yaml.YAMLError as e:
        raise ConfigError([f"{path}: not valid YAML: {_yaml_problem(e)}"], str(path)) from None
    except ValueError as e:  # JSONDecodeError, or a key given twice
        raise ConfigError([f"{path}: not valid JSON: {e}"], str(path)) from None
    except RecursionError:
        raise ConfigError([f"{path}: nested too deeply to be a config"], str(path)) from None
    if _count_values(data, MAX_DOCUMENT_VALUES) > MAX_DOCUMENT_VALUES:
        # YAML aliases can make a small file expand into billions of values ("billion laughs").
        raise ConfigError(
            [f"{path}: expands to more than {MAX_DOCUMENT_VALUES} values (YAML aliases?)"], str(path)
        )
    return data


def _count_values(data: Any, limit: int) -> int:
    """How many values `data` holds once aliases are expanded, counting no further than `limit` + 1."""
    count, stack = 0, [(data, 0)]
    while stack and count <= limit:
        value, depth = stack.pop()
        count += 1
        if depth > 100:
            return limit + 1  # deeper than any config needs
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
            count += len(value)
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
    return count


def parse_config(data: Any, base_dir: Path = Path("."), env: dict[str, str] | None = None) -> Config:
    """Validate an already-parsed config document; raises ConfigError listing every problem."""
    if not isinstance(data, dict):
        raise ConfigError(["(root): the config must be a mapping with at least `upstreams`"])
    errors: list[str] = []
    data = expand_env(data, dict(os.environ) if env is None else env, errors=errors)
    channel_errors = _channel_errors(data)  # listed with the rest even when the rest is wrong too
    try:
        config = Config.model_validate(data)
    except ValidationError as e:
        errors.extend(format_validation_error(e))
        raise ConfigError(errors + channel_errors) from None
    errors += _cross_references(config)
    errors += channel_errors
    if errors:
        raise ConfigError(errors)
    config.base_dir = base_dir
    config.database_url = _anchor_sqlite(config.database_url, base_dir)
    return config


def _channel_errors(data: dict[str, Any]) -> list[str]:
    """Each channel section, checked by its plugin (so a typo in `slack:` is refused at start)."""
    from proxy import channels

    errors: list[str] = []
    for name, section in channels.configured(data).items():
        errors += channels.validate(name, section)[1]
    return errors


def _cross_references(config: Config) -> list[str]:
    """Names that must refer to something defined elsewhere in the file."""
    errors = []
    if config.stdio_identity is not None and config.stdio_identity not in config.identities:
        errors.append(f"stdio_identity: {config.stdio_identity!r} is not one of `identities`")
    for name, ident in config.identities.items():
        if ident.acts_for is not None and ident.acts_for not in config.people:
            errors.append(f"identities.{name}.acts_for: {ident.acts_for!r} is not one of `people`")
    for name, group in config.approvers.items():
        unknown = [p for p in group.people if p not in config.people]
        errors += [f"approvers.{name}.people: {p!r} is not one of `people`" for p in unknown]
        errors += _on_call_references(config, name, group)
    return errors


def _on_call_references(config: Config, name: str, group: ApproverGroupConfig) -> list[str]:
    """A group following PagerDuty needs its API token, and its people emails to be matched by."""
    if group.pagerduty_target is None:
        return []
    kind = group.pagerduty_target[0]
    errors = []
    if config.pagerduty is None or config.pagerduty.api_token_env is None:
        errors.append(
            f"approvers.{name}.pagerduty_{kind}: needs `pagerduty.api_token_env` "
            "(a PagerDuty REST API key, to ask who is on call)"
        )
    if group.on_call_rule != "off":
        for person in group.people:
            if person in config.people and not config.people[person].email:
                errors.append(
                    f"approvers.{name}.people: {person!r} has no `email` in `people`; "
                    "PagerDuty's on-call users are matched by email"
                )
    return errors


def _anchor_sqlite(url: str, base_dir: Path) -> str:
    """A relative SQLite path is relative to the config file, not to wherever the gateway was started."""
    prefix, sep, path = url.partition(":///")
    if not prefix.startswith("sqlite") or not sep or not path or path.startswith(("/", ":memory:")):
        return url
    return f"{prefix}:///{(base_dir / path).resolve()}"


def load_config(path: str | Path, env: dict[str, str] | None = None) -> Config:
    """Read and validate the config file at `path`."""
    path = Path(path)
    try:
        return parse_config(read_document(path), path.resolve().parent, env)
    except ConfigError as e:
        raise ConfigError(e.errors, str(path)) from None
