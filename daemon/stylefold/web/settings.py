"""Where the page listens and who may use it: the ``[web]`` config made concrete.

A listen address other than loopback needs a token (SPEC §7): the API submits jobs and
serves every photo of the root, so an open port on a studio network must be locked.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ..config import Config

__all__ = ["DEFAULT_PORT", "ListenError", "WebSettings", "parse_listen"]

DEFAULT_PORT = 8707
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


class ListenError(ValueError):
    """A listen address or token setting that cannot be served; exit 2."""


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT``, ``HOST`` or ``:PORT`` -> (host, port)."""
    value = text.strip()
    host, port_text = value, ""
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise ListenError(f"listen address {text!r}: missing ']' after the IPv6 address")
        host, rest = value[1:end], value[end + 1:]
        if rest and not rest.startswith(":"):
            raise ListenError(f"listen address {text!r}: expected [ADDRESS]:PORT")
        port_text = rest[1:]
    elif value.count(":") == 1:
        host, port_text = value.split(":")
    elif value.count(":") > 1:
        raise ListenError(f"listen address {text!r}: write an IPv6 address in brackets, e.g. [::1]:{DEFAULT_PORT}")
    host = host or "127.0.0.1"
    try:
        port = int(port_text) if port_text else DEFAULT_PORT
    except ValueError:
        raise ListenError(f"listen address {text!r}: the port must be a number") from None
    if not 0 <= port <= 65535:
        raise ListenError(f"listen address {text!r}: the port must be within 0 to 65535")
    return host, port


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class WebSettings:
    host: str
    port: int
    token: str | None
    allowed_hosts: frozenset[str]
    max_upload_bytes: int

    @property
    def url(self) -> str:
        shown = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{shown}:{self.port}/"

    @classmethod
    def from_config(cls, config: Config, listen: str | None = None) -> WebSettings:
        """The settings for ``listen`` (default: the config's); ListenError if a
        non-loopback address has no token."""
        host, port = parse_listen(listen or config.web.listen)
        token = config.web.token
        if not is_loopback(host) and not token:
            raise ListenError(
                f"refusing to serve the status page on {host}:{port} without a token: anyone on the network could "
                "submit jobs and download every photo; set [web] token (or STYLEFOLD_WEB_TOKEN, 16+ characters), "
                "or listen on 127.0.0.1")
        names = {n.lower().strip("[]") for n in (*LOOPBACK_NAMES, host, *config.web.names)}
        return cls(host=host, port=port, token=token, allowed_hosts=frozenset(names),
                   max_upload_bytes=config.web.max_upload_mb * 1024 * 1024)
