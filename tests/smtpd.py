"""A real SMTP server for tests: aiosmtpd in a thread on 127.0.0.1, on a port of its own.

It records every message it accepts (envelope and raw bytes), counts connections, and answers
with faults set per address while it runs: a reply at MAIL, RCPT or DATA, or a connection dropped
at DATA, always or only the first N times; or it runs the test's own code once a message's DATA
has arrived and before it replies (`on_data`: e.g. kill the client in its uncertain window).
`BadServer` is not SMTP at all: silent after connecting, or one line (a 421) and close.
Optionally TLS (STARTTLS or implicit) with a
certificate from a test CA (trustme), and AUTH with USERNAME and PASSWORD. It offers
PIPELINING (RFC 2920) as real servers do, unless started with `pipelining=False`, and notes
for each MAIL whether the commands after it had already arrived (`ahead_of_mail`), and for each
message whether the client had sent more before its answer (`ahead_of_answer`).

Fixtures: `smtp_pki` (session), `smtp_server` (plain, no AUTH) and `tls_smtp_server` (a factory).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import pytest
import trustme
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from outreach.mailbox import LocalController

USERNAME = "outreach-test"
PASSWORD = "Tr0ub4dor&3-never-in-a-log"

Security = Literal["plain", "starttls", "ssl"]
Stage = Literal["mail", "rcpt", "data", "drop", "reset"]


@dataclass(frozen=True)
class Pki:
    """A test CA whose certificate for 127.0.0.1 and localhost the servers present, and an
    unrelated CA: a client that trusts only the latter must refuse the server."""

    cert: trustme.LeafCert
    ca_pem: Path
    other_ca_pem: Path

    @classmethod
    def create(cls, folder: Path) -> Pki:
        ca, other = trustme.CA(), trustme.CA()
        ca.cert_pem.write_to_path(str(folder / "ca.pem"))
        other.cert_pem.write_to_path(str(folder / "other-ca.pem"))
        cert = ca.issue_cert("127.0.0.1", "localhost")
        return cls(cert, folder / "ca.pem", folder / "other-ca.pem")

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.cert.configure_cert(context)
        return context


@dataclass(frozen=True)
class Received:
    """One accepted message, as the server saw it."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    mail_options: list[str]
    login: str | None  # who had logged in; None without AUTH
    tls: bool
    at: float = 0.0  # time.time() when the server accepted it


@dataclass
class Fault:
    stage: Stage
    address: str
    reply: str
    times: int | None  # None: every time; else this many times, then accept


DataHook = Callable[[tuple[str, int]], str | None]
"""Called with the client's (host, port) once a message's DATA has arrived, before the reply.
It returns the reply to send instead (the message is then not recorded), or None to go on."""


@dataclass
class Hook:
    address: str
    callback: DataHook
    times: int | None


class RecordingServer:
    """The server; a context manager, or start() and stop()."""

    def __init__(
        self,
        security: Security = "plain",
        *,
        auth: bool = False,
        auth_require_tls: bool = True,
        pki: Pki | None = None,
        port: int = 0,
        pipelining: bool = True,
        data_after_refusals: bool = False,
        answer_delay: float = 0.0,
    ) -> None:
        """`data_after_refusals`: answer DATA with 354 even when every recipient was refused,
        as RFC 2920 lets a pipelining server do; what the client then sends up to the final dot
        is kept in `sent_after_refusals` and refused. `answer_delay`: seconds to wait after a
        message's final dot before answering it (then `ahead_of_answer` tells, per message,
        whether the client's next commands had arrived in that time)."""
        if security != "plain" and pki is None:
            raise ValueError(f"a {security} server needs a Pki")
        self.host, self.port = "127.0.0.1", port  # 0: a free port, known once started
        self.security, self.auth, self.pki = security, auth, pki
        self.pipelining = pipelining
        self.ahead_of_mail: list[bool] = []  # per MAIL: were later commands already read?
        self.answer_delay = answer_delay
        self.ahead_of_answer: list[bool] = []  # per message: was more there before its answer?
        self.sent_after_refusals: list[bytes] | None = [] if data_after_refusals else None
        self.connections = 0
        self.logins: list[tuple[str, bool]] = []  # (login, accepted) for every AUTH attempt
        self._messages: list[Received] = []
        self._faults: list[Fault] = []
        self._hooks: list[Hook] = []
        self._lock = threading.Lock()
        self._live: weakref.WeakSet[SMTP] = weakref.WeakSet()
        self._controller = _Controller(
            _Handler(self),
            self._connected,
            self.sent_after_refusals,
            **self._smtp_options(auth_require_tls),
        )

    def _smtp_options(self, auth_require_tls: bool) -> dict[str, Any]:
        options: dict[str, Any] = {
            "hostname": self.host,
            "port": self.port,
            "server_hostname": "localhost",
            "decode_data": False,
            "enable_SMTPUTF8": True,
        }
        if self.pki is not None and self.security == "ssl":
            options["ssl_context"] = self.pki.server_context()
        elif self.pki is not None and self.security == "starttls":
            options["tls_context"] = self.pki.server_context()
            options["require_starttls"] = True
        if self.auth:
            options["authenticator"] = self._authenticate
            # aiosmtpd knows only STARTTLS as TLS: on implicit TLS it must not ask for more.
            options["auth_require_tls"] = auth_require_tls and self.security == "starttls"
        return options

    def start(self) -> Self:
        self._controller.start()
        self.port = self._controller.port
        with self._lock:  # forget the Controller's own trial connection
            self.connections = 0
        return self

    def stop(self) -> None:
        self._controller.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def messages(self) -> list[Received]:
        with self._lock:
            return list(self._messages)

    def settings_overrides(self) -> dict[str, object]:
        """Settings that point at this server: `load_settings(**server.settings_overrides())`."""
        return {
            "smtp_host": self.host,
            "smtp_port": self.port,
            "smtp_security": self.security,
            "smtp_username": USERNAME if self.auth else "",
            "smtp_password": PASSWORD if self.auth else "",
            "smtp_ca_bundle": self.pki.ca_pem if self.pki else None,
            "smtp_allow_insecure_auth": self.auth and self.security == "plain",
            "smtp_timeout": 5.0,
        }

    # --- faults, settable while the server runs ----------------------------------------------

    def fail_mail(
        self, address: str, code: int, text: str = "", *, times: int | None = None
    ) -> None:
        """Answer MAIL FROM:<address> with `code text`."""
        self._add_fault("mail", address, f"{code} {text or 'fault set by the test'}", times)

    def fail_rcpt(
        self, address: str, code: int, text: str = "", *, times: int | None = None
    ) -> None:
        """Answer RCPT TO:<address> with `code text`."""
        self._add_fault("rcpt", address, f"{code} {text or 'fault set by the test'}", times)

    def fail_data(
        self, address: str, code: int, text: str = "", *, times: int | None = None
    ) -> None:
        """Answer the end of DATA with `code text` for a message to address."""
        self._add_fault("data", address, f"{code} {text or 'fault set by the test'}", times)

    def drop_at_data(self, address: str, *, times: int | None = None) -> None:
        """Close the connection, after reading the message to address, instead of replying."""
        self._add_fault("drop", address, "", times)

    def reset_at_data(self, address: str, *, times: int | None = None) -> None:
        """As `drop_at_data`, with a reset (RST) instead of a close: the client's next write
        fails, where after a close it goes into the kernel and only the read finds out."""
        self._add_fault("reset", address, "", times)

    def on_data(self, address: str, callback: DataHook, *, times: int | None = None) -> None:
        """Call `callback(peer)` when a message to address has been received, before replying."""
        with self._lock:
            self._hooks.append(Hook(address.lower(), callback, times))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._hooks.clear()

    def drop_connections(self) -> None:
        """Close every open connection now, as a server does with idle ones."""

        async def close_all() -> None:
            for smtp in list(self._live):
                if smtp.transport is not None:
                    smtp.transport.close()

        asyncio.run_coroutine_threadsafe(close_all(), self._controller.loop).result(5)

    def _add_fault(self, stage: Stage, address: str, reply: str, times: int | None) -> None:
        with self._lock:
            self._faults.append(Fault(stage, address.lower(), reply, times))

    def _take_fault(self, stage: Stage, addresses: list[str]) -> Fault | None:
        """The first fault for this stage and one of these addresses, counted as used."""
        wanted = {a.lower() for a in addresses}
        with self._lock:
            for fault in self._faults:
                if fault.stage == stage and fault.address in wanted and fault.times != 0:
                    if fault.times is not None:
                        fault.times -= 1
                    return fault
        return None

    def _take_hook(self, addresses: list[str]) -> Hook | None:
        wanted = {a.lower() for a in addresses}
        with self._lock:
            for hook in self._hooks:
                if hook.address in wanted and hook.times != 0:
                    if hook.times is not None:
                        hook.times -= 1
                    return hook
        return None

    # --- called from the server's thread -------------------------------------------------------

    def _connected(self, smtp: SMTP) -> None:
        with self._lock:
            self.connections += 1
            self._live.add(smtp)

    def _record(self, message: Received) -> None:
        with self._lock:
            self._messages.append(message)

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
            USERNAME.encode(),
            PASSWORD.encode(),
        )
        login = data.login.decode("utf-8", "replace") if isinstance(data, LoginPassword) else ""
        with self._lock:
            self.logins.append((login, ok))
        return AuthResult(success=ok, handled=False, auth_data=data)  # False: aiosmtpd says 535


class _Controller(LocalController):
    """Tells the server of every connection, so it can count and close them."""

    def __init__(
        self,
        handler: object,
        on_connect: Callable[[SMTP], None],
        sent_after_refusals: list[bytes] | None,
        **kwargs: Any,
    ):
        super().__init__(handler, **kwargs)
        self._on_connect = on_connect
        self._sent_after_refusals = sent_after_refusals

    def factory(self) -> SMTP:
        if self._sent_after_refusals is None:
            smtp = super().factory()
        else:
            smtp = _DataAfterRefusals(self.handler, **self.SMTP_kwargs)
            smtp.kept = self._sent_after_refusals
        self._on_connect(smtp)
        return smtp


class _DataAfterRefusals(SMTP):
    """DATA answered 354 when every recipient was refused; what follows, to the final dot, kept
    (in `kept`) and refused. aiosmtpd itself answers such a DATA 503."""

    kept: list[bytes]

    async def smtp_DATA(self, arg: str) -> None:
        assert self.envelope is not None
        if self.envelope.rcpt_tos or not self.envelope.mail_from:
            await super().smtp_DATA(arg)
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        lines = []
        while (line := await self._reader.readuntil(b"\r\n")) != b".\r\n":  # type: ignore[attr-defined]
            lines.append(line)
        self.kept.append(b"".join(lines))
        await self.push("554 5.5.1 Error: no valid recipients")


class _Handler:
    """aiosmtpd hooks: faults first, then the ordinary answer; records what it accepts."""

    def __init__(self, owner: RecordingServer) -> None:
        self.owner = owner

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        if self.owner.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        # What the client sent after MAIL and before its reply: nothing, unless it pipelines.
        self.owner.ahead_of_mail.append(bool(server._reader._buffer))  # type: ignore[attr-defined]
        if self.owner.auth and not session.authenticated:
            return "530 5.7.0 Authentication required"
        fault = self.owner._take_fault("mail", [address])
        if fault is not None:
            return fault.reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        fault = self.owner._take_fault("rcpt", [address])
        if fault is not None:
            return fault.reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.owner.answer_delay:
            await asyncio.sleep(self.owner.answer_delay)
        self.owner.ahead_of_answer.append(bool(server._reader._buffer))  # type: ignore[attr-defined]
        hook = self.owner._take_hook(envelope.rcpt_tos)
        if hook is not None:
            reply = hook.callback(session.peer)
            if reply is not None:
                return reply
        if self.owner._take_fault("drop", envelope.rcpt_tos) is not None:
            assert server.transport is not None
            server.transport.close()
            return "421 never read: the connection is closed"
        if self.owner._take_fault("reset", envelope.rcpt_tos) is not None:
            assert server.transport is not None
            linger = struct.pack("ii", 1, 0)  # on, 0 s: close() sends RST, not FIN
            server.transport.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, linger
            )
            server.transport.abort()
            return "421 never read: the connection is reset"
        fault = self.owner._take_fault("data", envelope.rcpt_tos)
        if fault is not None:
            return fault.reply
        self.owner._record(_received(server, session, envelope))
        return "250 OK"


def _received(server: SMTP, session: Session, envelope: Envelope) -> Received:
    login = session.login_data
    assert server.transport is not None
    return Received(
        mail_from=envelope.mail_from or "",
        rcpt_tos=list(envelope.rcpt_tos),
        data=envelope.original_content or b"",
        mail_options=list(envelope.mail_options),
        login=login.decode() if isinstance(login, bytes) else None,
        tls=server.transport.get_extra_info("ssl_object") is not None,
        at=time.time(),
    )


class BadServer:
    """Not an SMTP server: it accepts TCP connections on 127.0.0.1 and either never says a word
    (`greeting=None`: a client waits for its timeout) or sends one line, such as
    "421 4.3.2 try later", and closes. Counts the connections; a context manager."""

    def __init__(self, greeting: str | None = None, *, port: int = 0) -> None:
        self.greeting, self.host = greeting, "127.0.0.1"
        self.connections = 0
        self._listener = socket.create_server((self.host, port))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._open: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="bad-smtp", daemon=True)

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._listener.close()
        for conn in self._open:
            conn.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            if self.greeting is None:
                self._open.append(conn)  # held open, silent, until stop()
                continue
            with suppress(OSError):
                conn.sendall(self.greeting.encode() + b"\r\n")
            conn.close()


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def smtp_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.create(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def smtp_server() -> Iterator[RecordingServer]:
    """A plain server without AUTH, like a local relay."""
    with RecordingServer() as server:
        yield server


@pytest.fixture
def tls_smtp_server(smtp_pki: Pki) -> Iterator[Callable[..., RecordingServer]]:
    """A factory: `tls_smtp_server("starttls" | "ssl" | "plain", auth=True,
    auth_require_tls=True)` starts a server that stops when the test ends."""
    with ExitStack() as stack:

        def start(
            security: Security = "starttls", *, auth: bool = True, auth_require_tls: bool = True
        ) -> RecordingServer:
            server = RecordingServer(
                security, auth=auth, auth_require_tls=auth_require_tls, pki=smtp_pki
            )
            return stack.enter_context(server)

        yield start
