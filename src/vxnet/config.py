"""Server configuration: one TOML file.

```toml
[server]
listen = "127.0.0.1:9696"            # also --listen
store = "sqlite:///var/lib/vxnet/vxnet.db"   # also --store
data_dir = "/var/lib/vxnet"
public_url = "http://127.0.0.1:9696"  # what the catalog advertises (default: from listen)
underlay_mtu = 1500                   # network mtu = underlay_mtu - 50
token_ttl = 3600                      # seconds
agent_down_time = 15                  # seconds without heartbeat -> agent not alive
tls_cert = "/etc/vxnet/server.pem"    # serve HTTPS (both or neither)
tls_key = "/etc/vxnet/server.key"
policy_file = "/etc/vxnet/policy.yaml"  # operator overrides of the API policy (docs/policy.md)
max_body_bytes = 1048576              # bigger request bodies -> 413, refused before they are read
max_json_depth = 32                   # deeper JSON bodies -> 400
max_page_size = 1000                  # list pages never hold more (Neutron's pagination_max_limit;
                                      # `<collection>_links` carry the `next` page); 0 = no cap
access_log = true                     # one line per request on `vxnet.access`, writes and
                                      # denials on `vxnet.audit` (both at info)
metrics_listen = "127.0.0.1:9698"     # serve /metrics only there (not on the API port)
metrics_public = false                # on the API port, /metrics needs an admin token unless true
log_level = "info"                    # also --log-level (which wins); re-read on SIGHUP
log_format = "text"                   # or "json" (one object per line); also --log-format

[identity]
login_failures_per_user = 5           # failed logins per user name per window -> 429
login_failures_per_source = 20        # failed logins per client address per window -> 429
login_failure_window = 60             # seconds

[quotas]                              # Neutron's defaults; -1 = unlimited (docs/quotas.md)
quota_port = 500                      # also quota_network, quota_subnet, quota_router, ...
max_fixed_ips_per_port = 5
max_allowed_address_pair = 10
enabled = true                        # false: no counting, no enforcement

[nova]                                # Nova external events (docs/nova.md); absent: none sent
url = "http://nova:8774/v2.1"         # the compute endpoint (events go to {url}/os-server-external-events)
username = "nova-notifier"            # without auth_url: a user of vxnet's own identity whose
project = "service"                   # token is minted by the server (its roles on `project`)
# auth_url = "http://keystone:5000/v3"  # with it: a real Keystone, password auth as Neutron
# password = "..."                      # (also user_domain, project_domain: default "Default";
# region = "RegionOne"                  #  region: recorded, the url is used as given)

[[identity.users]]
name = "admin"
password_hash = "$scrypt$ln=15,r=8,p=1$..."   # from `vxnet passwd`; preferred over a plain
# password = "s3cret"                         # `password` (one of the two is required)
project = "admin"
roles = ["admin"]
enabled = true                        # false: no login, and the user's tokens stop working

[[identity.users]]                    # one agent identity per host (docs/identity.md)
name = "agent-compute-1"
password_hash = "$scrypt$..."
project = "service"
roles = ["service"]
hosts = ["compute-1"]                 # acts only for these hosts on the agent endpoints (403
                                      # for any other); absent = any host; [] = none
```
Project and user ids are derived from their names (stable across servers and restarts).

The agent's file (`vxnet agent --config`) may hold a `[metadata]` table (`load_metadata`):
```toml
[metadata]
nova_metadata_url = "http://nova-api:8775"   # Nova's metadata API
shared_secret_file = "/etc/vxnet/metadata-secret"   # 0600; or shared_secret = "..." inline
                                             # (then this file must be 0600)
timeout = 10                                 # seconds; then 503 to the VM
```
"""

from __future__ import annotations

import dataclasses
import functools
import re
import tomllib
import uuid
from typing import Any

from vxnet.passwords import BadHash, parse_hash

_NS = uuid.UUID("6f1b1c3e-7d8a-4c55-9a3e-2b7c1f0d9e11")


def project_id_for(name: str) -> str:
    """Stable 32-hex project id for a project name (Keystone ids look like this)."""
    return uuid.uuid5(_NS, "project:" + name).hex


def user_id_for(name: str) -> str:
    """Stable 32-hex user id for a user name."""
    return uuid.uuid5(_NS, "user:" + name).hex


@dataclasses.dataclass(frozen=True)
class User:
    name: str
    password: str
    project: str
    roles: tuple[str, ...]
    password_hash: str = ""
    enabled: bool = True
    # the hosts a service user acts for on the agent endpoints (api/routers/agent_stream.py);
    # None = any host (the default, as before `hosts` existed), empty = none
    hosts: frozenset[str] | None = None

    @functools.cached_property  # checked on every request (api/auth.py); uuid5 is not free
    def id(self) -> str:
        return user_id_for(self.name)

    @functools.cached_property
    def project_id(self) -> str:
        return project_id_for(self.project)


QUOTA_DEFAULTS: dict[str, int] = {  # Neutron's default quotas
    "network": 100, "subnet": 100, "port": 500, "router": 10, "floatingip": 50,
    "security_group": 10, "security_group_rule": 100, "subnetpool": -1, "rbac_policy": 10,
}


@dataclasses.dataclass(frozen=True)
class QuotaSettings:
    """The `[quotas]` section: default limits (`quota_<resource>`, -1 = unlimited) and the
    per-port limits Neutron keeps in its [DEFAULT] section."""

    enabled: bool = True
    defaults: tuple[tuple[str, int], ...] = tuple(QUOTA_DEFAULTS.items())
    max_fixed_ips_per_port: int = 5
    max_allowed_address_pair: int = 10


def load_quotas(raw: dict[str, object]) -> QuotaSettings:
    """Parse a `[quotas]` table; unknown keys or values that are not integers >= -1 are errors."""
    defaults = dict(QUOTA_DEFAULTS)
    out: dict[str, object] = {}
    for key, value in raw.items():
        if key == "enabled":
            if not isinstance(value, bool):
                raise ConfigError("[quotas] enabled must be true or false")
            out["enabled"] = value
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < -1:
            raise ConfigError(f"[quotas] {key} must be an integer >= -1, not {value!r}")
        if key in ("max_fixed_ips_per_port", "max_allowed_address_pair"):
            out[key] = value
        elif key.startswith("quota_") and key[6:] in defaults:
            defaults[key[6:]] = value
        else:
            raise ConfigError(f"unknown [quotas] key: {key}")
    return QuotaSettings(defaults=tuple(defaults.items()), **out)  # type: ignore[arg-type]


@dataclasses.dataclass(frozen=True)
class NovaSettings:
    """The `[nova]` section: where Nova's external events go and how the server authenticates."""

    url: str
    username: str = ""
    password: str = ""
    project: str = ""
    auth_url: str = ""
    region: str = ""
    user_domain: str = "Default"
    project_domain: str = "Default"


_NOVA_KEYS = {f.name for f in dataclasses.fields(NovaSettings)}


def load_nova(raw: object) -> NovaSettings | None:
    """Parse a `[nova]` table (None when absent); `url` and `username` are required, and with
    `auth_url` also `password` and `project`."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError("[nova] must be a table")
    unknown = set(raw) - _NOVA_KEYS
    if unknown:
        raise ConfigError(f"unknown [nova] keys: {', '.join(sorted(unknown))}")
    for k, v in raw.items():
        if not isinstance(v, str):
            raise ConfigError(f"[nova] {k} must be a string, not {v!r}")
    if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", raw.get("url", "")):
        raise ConfigError("[nova] url must be the compute endpoint's http(s) URL")
    if not raw.get("username"):
        raise ConfigError("[nova] username is required (the service user events are sent as)")
    if raw.get("auth_url") and not (raw.get("password") and raw.get("project")):
        raise ConfigError("[nova] auth_url needs password and project")
    return NovaSettings(**raw)


@dataclasses.dataclass(frozen=True)
class Config:
    listen: str = "127.0.0.1:9696"
    store: str | None = None
    data_dir: str = "/var/lib/vxnet"
    public_url: str | None = None
    underlay_mtu: int = 1500
    token_ttl: int = 3600
    agent_down_time: int = 15
    tls_cert: str | None = None
    tls_key: str | None = None
    policy_file: str | None = None  # oslo.policy overrides of Neutron's rules (docs/policy.md)
    max_body_bytes: int = 1 << 20
    max_json_depth: int = 32
    max_page_size: int = 1000
    access_log: bool = True
    metrics_listen: str | None = None
    metrics_public: bool = False
    log_level: str | None = None     # None: the command line's (default warning); re-read on SIGHUP
    log_format: str = "text"         # text | json
    users: tuple[User, ...] = ()
    extra_projects: tuple[str, ...] = ()
    login_failures_per_user: int = 5
    login_failures_per_source: int = 20
    login_failure_window: int = 60
    quotas: QuotaSettings = QuotaSettings()
    nova: NovaSettings | None = None

    @property
    def projects(self) -> dict[str, str]:
        """Project id -> name, for every project the config declares."""
        names = [u.project for u in self.users] + list(self.extra_projects)
        return {project_id_for(n): n for n in names}

    def with_overrides(self, **kw: object) -> Config:
        return dataclasses.replace(self, **{k: v for k, v in kw.items() if v is not None})

    def __post_init__(self) -> None:
        _check_limits(self)


class ConfigError(Exception):
    """The configuration file is unusable."""


_LIMITS = {"max_body_bytes": 1, "max_json_depth": 1, "max_page_size": 0}


def _check_limits(cfg: Config) -> None:
    """The request-limit keys are integers with a floor; the switches are booleans."""
    for key, floor in _LIMITS.items():
        v = getattr(cfg, key)
        if isinstance(v, bool) or not isinstance(v, int) or v < floor:
            raise ConfigError(f"[server] {key} must be an integer >= {floor}, not {v!r}")
    for key in ("access_log", "metrics_public"):
        if not isinstance(getattr(cfg, key), bool):
            raise ConfigError(f"[server] {key} must be true or false")
    from vxnet.logsetup import check

    try:
        check(cfg.log_level or "info", cfg.log_format)
    except ValueError as e:
        raise ConfigError(f"[server] {e}") from None
    if cfg.metrics_listen is not None and not re.fullmatch(r"\[?[\w.:-]*\]?:\d{1,5}", cfg.metrics_listen):
        raise ConfigError(f"[server] metrics_listen must be HOST:PORT, not {cfg.metrics_listen!r}")


def plain_secrets(raw: dict[str, Any]) -> list[str]:
    """Where a parsed server config holds a secret in plain text: users' `password` (not
    `password_hash`) and `[nova] password`."""
    users = raw.get("identity", {}).get("users", []) if isinstance(raw.get("identity"), dict) else []
    found = [f"the password of user {u.get('name')!r}" for u in users if isinstance(u, dict) and u.get("password")]
    nova = raw.get("nova")
    if isinstance(nova, dict) and nova.get("password"):
        found.append("[nova] password")
    return found


def exposed_secrets(path: str) -> str | None:
    """A warning when the server config at `path` holds plain-text secrets and others can read
    it or its group can write it; None otherwise. Not refused: the file is the operator's (a
    sample or a lab's config may be 0644 on purpose); docs/deployment.md asks for 0640
    root:vxnet or stricter. `vxnet server` logs it once at start."""
    import os
    import stat

    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
        with open(path, "rb") as f:
            secrets = plain_secrets(tomllib.load(f))
    except (OSError, tomllib.TOMLDecodeError):
        return None
    if not secrets or not mode & 0o027:
        return None
    named = ", ".join(secrets[:3]) + (f" and {len(secrets) - 3} more" if len(secrets) > 3 else "")
    return (f"config {path} has mode {mode:04o} and holds {named} in plain text: other local users can read "
            f"or change it. Run `chmod 600 {path}` (or 640 with the server's own group), or use password_hash "
            f"(`vxnet passwd`)")


def load_config(path: str | None) -> Config:
    """Read a TOML config file; None gives the built-in defaults (no users)."""
    if path is None:
        return Config()
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot read config {path}: {e}") from e
    server = raw.get("server", {})
    identity = raw.get("identity", {})
    users = tuple(_user(u) for u in identity.get("users", []))
    allowed = {f.name for f in dataclasses.fields(Config)} - {"users", "extra_projects", "quotas", "nova", *IDENTITY_KEYS}
    unknown = set(server) - allowed
    if unknown:
        raise ConfigError(f"unknown [server] keys: {', '.join(sorted(unknown))}")
    limits = {k: identity[k] for k in IDENTITY_KEYS if k in identity}
    unknown = set(identity) - {"users", "projects", *IDENTITY_KEYS}
    if unknown:
        raise ConfigError(f"unknown [identity] keys: {', '.join(sorted(unknown))}")
    for k, v in limits.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"[identity] {k} must be a positive integer, not {v!r}")
    return Config(
        users=users,
        extra_projects=tuple(identity.get("projects", [])),
        **limits,
        quotas=load_quotas(raw.get("quotas", {})),
        nova=load_nova(raw.get("nova")),
        **server,
    )


@dataclasses.dataclass(frozen=True)
class MetadataSettings:
    """The agent's `[metadata]` section (docs/metadata.md): where its metadata proxy sends the
    VMs' requests, and the secret that signs their instance ids (Nova's
    `[neutron] metadata_proxy_shared_secret`)."""

    nova_metadata_url: str
    shared_secret: str = dataclasses.field(repr=False)
    timeout: float = 10.0          # seconds for Nova's whole answer; then 503 to the VM


METADATA_KEYS = {"nova_metadata_url", "shared_secret", "shared_secret_file", "timeout"}


def _read_secret_file(path: str, what: str) -> str:
    """The text of a secret-holding file, refused when its group or others can read or write it."""
    import os
    import stat

    try:
        st = os.stat(path)
        if st.st_mode & 0o077:
            raise ConfigError(f"{what} {path} has mode {stat.S_IMODE(st.st_mode):04o}: it holds the metadata "
                              f"shared secret, so other local users could sign any instance id. "
                              f"Run `chmod 600 {path}`.")
        with open(path) as f:
            return f.read()
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e}") from e


def load_metadata(path: str | None) -> MetadataSettings | None:
    """The `[metadata]` table of a TOML file; None when the file or the table is absent.

    `shared_secret` inline needs the file itself private (mode 0600 or stricter);
    `shared_secret_file` names a private file holding it (one line)."""
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f).get("metadata")
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot read config {path}: {e}") from e
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError("[metadata] must be a table")
    unknown = set(raw) - METADATA_KEYS
    if unknown:
        raise ConfigError(f"unknown [metadata] keys: {', '.join(sorted(unknown))}")
    url = raw.get("nova_metadata_url")
    if not isinstance(url, str) or not re.fullmatch(r"https?://[^/\s]+(/\S*)?", url):
        raise ConfigError(f"[metadata] nova_metadata_url must be an http(s) URL, not {url!r}")
    if ("shared_secret" in raw) == ("shared_secret_file" in raw):
        raise ConfigError("[metadata] needs exactly one of shared_secret, shared_secret_file")
    if "shared_secret" in raw:
        _read_secret_file(path, "config file")          # the file holding it must be private
        secret = raw["shared_secret"]
    else:
        secret = _read_secret_file(str(raw["shared_secret_file"]), "shared_secret_file").strip()
    if not isinstance(secret, str) or not secret:
        raise ConfigError("[metadata] shared secret must be a non-empty string")
    timeout = raw.get("timeout", 10.0)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 300:
        raise ConfigError(f"[metadata] timeout must be a number of seconds in (0, 300], not {timeout!r}")
    return MetadataSettings(url.rstrip("/"), secret, float(timeout))


IDENTITY_KEYS = ("login_failures_per_user", "login_failures_per_source", "login_failure_window")
_USER_KEYS = {"name", "password", "password_hash", "project", "roles", "enabled", "hosts"}


def _user(u: object) -> User:
    """One `[[identity.users]]` entry, checked."""
    if not isinstance(u, dict):
        raise ConfigError(f"identity.users entry {u!r} is not a table")
    unknown = set(u) - _USER_KEYS
    if unknown:
        raise ConfigError(f"identity.users entry {u.get('name')!r} has unknown keys: {', '.join(sorted(unknown))}")
    try:
        name, project = str(u["name"]), str(u["project"])
    except KeyError as e:
        raise ConfigError(f"identity.users entry {u!r} lacks {e}") from e
    password, password_hash = str(u.get("password", "")), str(u.get("password_hash", ""))
    if not password and not password_hash:
        raise ConfigError(f"identity.users entry {name!r} needs password_hash (preferred) or password")
    if password_hash:
        try:
            parse_hash(password_hash)
        except BadHash as e:
            raise ConfigError(f"identity.users entry {name!r}: {e}") from None
    roles = u.get("roles", ["member"])
    if not isinstance(roles, list) or not all(isinstance(r, str) and r for r in roles):
        raise ConfigError(f"identity.users entry {name!r}: roles must be a list of names")
    enabled = u.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError(f"identity.users entry {name!r}: enabled must be true or false")
    return User(name, password, project, tuple(roles), password_hash, enabled, _user_hosts(name, roles, u))


def _user_hosts(name: str, roles: list[str], u: dict[str, object]) -> frozenset[str] | None:
    """The entry's `hosts` (absent = any host); a host name as the agent endpoints take one."""
    if "hosts" not in u:
        return None
    hosts = u["hosts"]
    if not isinstance(hosts, list) or not all(
        isinstance(h, str) and h and len(h) <= 255 and not any(c.isspace() for c in h) for h in hosts
    ):
        raise ConfigError(f"identity.users entry {name!r}: hosts must be a list of host names")
    if "admin" in roles:  # an admin acts for every host: a list would only look like a limit
        raise ConfigError(f"identity.users entry {name!r}: hosts cannot limit an admin")
    return frozenset(hosts)
