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
max_body_bytes = 1048576              # bigger request bodies -> 413, refused before they are read
max_json_depth = 32                   # deeper JSON bodies -> 400
max_page_size = 1000                  # list pages never hold more (Neutron's pagination_max_limit;
                                      # `<collection>_links` carry the `next` page); 0 = no cap
access_log = true                     # one line per request on `vxnet.access`, writes and
                                      # denials on `vxnet.audit` (both at info)
metrics_listen = "127.0.0.1:9698"     # serve /metrics only there (not on the API port)
metrics_public = false                # on the API port, /metrics needs an admin token unless true

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
import re
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
    max_body_bytes: int = 1 << 20
    max_json_depth: int = 32
    max_page_size: int = 1000
    access_log: bool = True
    metrics_listen: str | None = None
    metrics_public: bool = False
    users: tuple[User, ...] = ()
    extra_projects: tuple[str, ...] = ()

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
    if cfg.metrics_listen is not None and not re.fullmatch(r"\[?[\w.:-]*\]?:\d{1,5}", cfg.metrics_listen):
        raise ConfigError(f"[server] metrics_listen must be HOST:PORT, not {cfg.metrics_listen!r}")


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
    allowed = {f.name for f in dataclasses.fields(Config)} - {"users", "extra_projects"}
    unknown = set(server) - allowed
    if unknown:
        raise ConfigError(f"unknown [server] keys: {', '.join(sorted(unknown))}")
    return Config(
        users=tuple(users),
        extra_projects=tuple(raw.get("identity", {}).get("projects", [])),
        **server,
    )
