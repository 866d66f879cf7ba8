"""SSRF guard for tools that fetch URLs a model chose.

A model can be talked (by a web page, a document, a user) into fetching
``http://169.254.169.254/`` or an admin page on the local network. So before
each request, and again for every redirect hop, the guard:

- accepts only ``http`` and ``https`` URLs with a host;
- resolves the host with ``getaddrinfo`` (which also decodes the decimal,
  octal and hex spellings such as ``0x7f000001`` or ``2130706433``) and
  refuses if *any* address is loopback, private, link-local, reserved,
  multicast, unspecified or otherwise not globally routable;
- looks inside every IPv6 form that carries an IPv4 address (IPv4-mapped
  ``::ffff:a.b.c.d``, IPv4-compatible ``::a.b.c.d``, NAT64 ``64:ff9b::/96``,
  6to4 ``2002::/16``, Teredo ``2001::/32``) and refuses if the IPv4 address
  inside would be refused: ``2002:a9fe:a9fe::`` is 169.254.169.254 in
  disguise, and a 6to4 or Teredo relay on the path may deliver it there.

Checking the name and then letting the HTTP client resolve it again would
leave a window (DNS rebinding: the second answer differs); ``fetch_backend``
closes it by connecting only to addresses the guard has just checked.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable, Sequence
from urllib.parse import urlsplit

from hanlin import ConfigurationError, ToolInputError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Sequence[str]]  # (host, port) -> IP address strings
ALLOWED_SCHEMES = ("http", "https")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215: a site's own translator, never public
_TRANSLATED = ("IPv4-mapped", "NAT64")  # forms that are the IPv4 host itself, not an IPv6 host


class URLRefused(ToolInputError):
    """A URL the guard will not fetch; the message says why, for the model to read."""


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to, as the OS resolver answers (IPv4 and IPv6)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]).split("%")[0] for info in infos))  # drop IPv6 scope ids, keep order


def carried_ipv4(ip: IPAddress) -> list[tuple[str, ipaddress.IPv4Address]]:
    """Every IPv4 address an IPv6 address carries, each with the name of the form that carries it.

    A tunnelled or translated address reaches the IPv4 host inside it (through the kernel, a NAT64 gateway, or a
    6to4 or Teredo relay), so that host must pass the guard too. Teredo carries two: its server and, obfuscated,
    its client (``ipaddress`` undoes the obfuscation).
    """
    if isinstance(ip, ipaddress.IPv4Address):
        return []
    if ip.ipv4_mapped is not None:
        return [("IPv4-mapped", ip.ipv4_mapped)]
    if ip in _NAT64:
        return [("NAT64", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))]
    if ip.sixtofour is not None:
        return [("6to4", ip.sixtofour)]
    if ip.teredo is not None:
        server, client = ip.teredo
        return [("Teredo client", client), ("Teredo server", server)]
    if 1 < int(ip) <= 0xFFFFFFFF:  # ::a.b.c.d, deprecated but still parsed and routed by some stacks
        return [("IPv4-compatible", ipaddress.IPv4Address(int(ip)))]
    return []


def why_blocked(ip: IPAddress) -> str | None:
    """Which kind of non-public address ``ip`` is, or None if it is a public unicast address."""
    carried = carried_ipv4(ip)
    for form, inner in carried:
        reason = why_blocked(inner)
        if reason:
            return f"{reason} (inside the IPv6 address {ip}, as its {form} address)"
    if carried and carried[0][0] in _TRANSLATED:  # the IPv4 host itself, and it is public
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip in _NAT64_LOCAL:
        return "a local-use NAT64 address (a site's own IPv4 network)"
    for flag, name in (
        ("is_unspecified", "an unspecified address"), ("is_loopback", "a loopback address"),
        ("is_link_local", "a link-local address"), ("is_multicast", "a multicast address"),
        ("is_private", "a private-network address"), ("is_reserved", "a reserved address"),
    ):
        if getattr(ip, flag):
            return name
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return "a site-local address"
    if not ip.is_global:  # shared address space 100.64/10, documentation ranges, ...
        return "an address that is not publicly routable"
    return None


def _parse_networks(networks: Iterable[str]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    out = []
    for net in networks:
        try:
            out.append(ipaddress.ip_network(net, strict=False))
        except ValueError as exc:
            raise ConfigurationError(f"allow_networks: {net!r} is not an IP network ({exc}); write e.g. '10.1.0.0/16'") from None
    return tuple(out)


class URLGuard:
    """Decides whether a URL may be fetched; one instance per fetcher.

    ``allow_private=True`` turns the address check off (a trusted intranet, tests); ``allow_networks`` instead
    opens only the listed networks (e.g. ``["10.1.2.0/24"]`` for one docs server) and keeps the rest closed.
    ``resolver`` replaces the OS resolver (tests inject one to simulate DNS answers).
    """

    def __init__(self, *, allow_private: bool = False, allow_networks: Iterable[str] = (),
                 resolver: Resolver | None = None) -> None:
        self.allow_private = allow_private
        self.allow_networks = _parse_networks(allow_networks)
        self.resolver: Resolver = resolver or system_resolver

    @property
    def checks_addresses(self) -> bool:
        return not self.allow_private

    def check_url(self, url: str) -> tuple[str, int]:
        """Validate the URL's form and every address of its host; return (host, port) or raise URLRefused."""
        if not isinstance(url, str) or not url.strip():
            raise URLRefused("the URL is empty; give a full http(s) URL such as https://example.org/page")
        url = url.strip()
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise URLRefused(f"{url!r} is not a valid URL ({exc})") from None
        scheme = parts.scheme.lower()
        if scheme not in ALLOWED_SCHEMES:
            if not scheme:
                raise URLRefused(f"{url!r} has no scheme; write the full address, e.g. 'https://{url.lstrip('/')}'")
            raise URLRefused(
                f"refused {url!r}: the scheme '{scheme}:' is not allowed; only http:// and https:// URLs can be fetched"
            )
        host = parts.hostname
        if not host:
            raise URLRefused(f"refused {url!r}: the URL has no host name")
        port = port or (443 if scheme == "https" else 80)
        self.check_host(host, port, url=url)
        return host, port

    def check_host(self, host: str, port: int, *, url: str | None = None) -> list[str]:
        """Resolve ``host`` and return its addresses if every one is allowed, else raise URLRefused."""
        if not self.checks_addresses:
            return []
        what = url or host
        try:
            addresses = [str(ipaddress.ip_address(host.strip("[]")))]
            literal = True
        except ValueError:
            literal = False
            try:
                addresses = list(self.resolver(host, port))
            except (OSError, UnicodeError) as exc:
                raise URLRefused(f"cannot fetch {what!r}: the host name {host!r} does not resolve ({exc})") from None
        if not addresses:
            raise URLRefused(f"cannot fetch {what!r}: the host name {host!r} resolved to no address")
        for address in addresses:
            reason = self._refusal(address)
            if reason:
                via = "" if literal else f" (it resolves to {address})"
                raise URLRefused(
                    f"refused {what!r}: the host {host!r}{via} is {reason}. Only public web addresses "
                    "can be fetched; an operator can allow private ones with allow_private=True or allow_networks"
                )
        return addresses

    def _refusal(self, address: str) -> str | None:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return f"not a valid IP address ({address!r})"
        if any(ip in net for net in self.allow_networks):
            return None
        carried = carried_ipv4(ip)
        if carried and carried[0][0] in _TRANSLATED and any(carried[0][1] in net for net in self.allow_networks):
            return None  # an opened IPv4 network is open in its IPv4-mapped and NAT64 spellings too
        return why_blocked(ip)
