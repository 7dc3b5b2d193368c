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

[quotas]                              # Neutron's defaults; -1 = unlimited (docs/quotas.md)
quota_port = 500                      # also quota_network, quota_subnet, quota_router, ...
max_fixed_ips_per_port = 5
max_allowed_address_pair = 10
enabled = true                        # false: no counting, no enforcement

[[identity.users]]
name = "admin"
password = "s3cret"
project = "admin"
roles = ["admin"]
```
Project and user ids are derived from their names (stable across servers and restarts).
"""

from __future__ import annotations

import dataclasses
import tomllib
import uuid

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

    @property
    def id(self) -> str:
        return user_id_for(self.name)

    @property
    def project_id(self) -> str:
        return project_id_for(self.project)


QUOTA_DEFAULTS: dict[str, int] = {  # Neutron's default quotas
    "network": 100, "subnet": 100, "port": 500, "router": 10, "floatingip": 50,
    "security_group": 10, "security_group_rule": 100,
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
    users: tuple[User, ...] = ()
    extra_projects: tuple[str, ...] = ()
    quotas: QuotaSettings = QuotaSettings()

    @property
    def projects(self) -> dict[str, str]:
        """Project id -> name, for every project the config declares."""
        names = [u.project for u in self.users] + list(self.extra_projects)
        return {project_id_for(n): n for n in names}

    def with_overrides(self, **kw: object) -> Config:
        return dataclasses.replace(self, **{k: v for k, v in kw.items() if v is not None})


class ConfigError(Exception):
    """The configuration file is unusable."""


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
    users = []
    for u in raw.get("identity", {}).get("users", []):
        try:
            users.append(User(str(u["name"]), str(u["password"]), str(u["project"]), tuple(u.get("roles", ["member"]))))
        except KeyError as e:
            raise ConfigError(f"identity.users entry {u!r} lacks {e}") from e
    allowed = {f.name for f in dataclasses.fields(Config)} - {"users", "extra_projects", "quotas"}
    unknown = set(server) - allowed
    if unknown:
        raise ConfigError(f"unknown [server] keys: {', '.join(sorted(unknown))}")
    return Config(
        users=tuple(users),
        extra_projects=tuple(raw.get("identity", {}).get("projects", [])),
        quotas=load_quotas(raw.get("quotas", {})),
        **server,
    )
