"""The only code that speaks SMTP: one reused connection, TLS that verifies, AUTH only over TLS.

Every failure is sorted once (`classify`) into the error tree:

    TransientSmtpError   4xx, timeouts, refused or dropped connections: try again later
    PermanentSmtpError   5xx: this message will never be accepted as it is
    UncertainSmtpError   the connection failed after the message's final dot was sent and
                         before the server's reply: it may have been accepted
    ConfigError          the connection as configured cannot be made safely: STARTTLS not
                         offered, certificate not trusted, AUTH refused or not over TLS

Messages name `host:port`; `code` and `reply` keep the server's words. smtplib's debuglevel is
never set (it would print the AUTH line); this module logs at debug level without the password.
"""

from __future__ import annotations

import logging
import re
import smtplib
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Literal, Protocol, Self, cast, get_args

from outreach.errors import (
    ConfigError,
    OutreachError,
    PermanentSmtpError,
    SmtpError,
    TransientSmtpError,
    UncertainSmtpError,
    Unreachable,
)

if TYPE_CHECKING:
    from outreach.config import Settings

log = logging.getLogger("outreach.smtp")

Security = Literal["plain", "starttls", "ssl"]
SECURITIES: tuple[str, ...] = get_args(Security)


Refused = dict[str, tuple[int, str]]
"""Recipients the server refused while accepting the message for others: address -> reply."""

Content = bytes | Sequence[bytes]
"""A message's bytes, whole or in the pieces they join from (`compose.compose_pieces`)."""


class Transport(Protocol):
    """What the send loop needs of an SMTP connection (a narrow face, for other transports): a
    message in phases, so that the next message's commands can go out before the last one's
    reply is read. Per message: `begin`, `ready`, `transmit`, then `answer` (before the next
    message's `ready`) or `abort` instead of `ready`."""

    def open(self) -> None: ...

    def begin(
        self, *, sender: str, recipients: list[str], data: Content, smtputf8: bool = False
    ) -> None: ...

    def answer(self) -> None: ...

    def ready(self) -> Refused: ...

    def transmit(self) -> None: ...

    def abort(self) -> None: ...

    def close(self) -> None: ...


def classify(code: int) -> type[SmtpError]:
    """The one rule: a 4xx reply may succeed later; anything else will not get better."""
    return TransientSmtpError if 400 <= code < 500 else PermanentSmtpError


class SmtpClient:
    """One SMTP connection, opened on the first send and reused for every message after it.

    A reused connection is not checked before each message (a round trip per message): if the
    server closed it meanwhile, MAIL FROM fails before anything was sent, and the message goes
    once more over a new connection.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        security: Security,
        username: str = "",
        password: str = "",
        timeout: float,
        ca_bundle: Path | None = None,
        allow_insecure_auth: bool = False,
        local_hostname: str | None = None,
    ) -> None:
        self.host, self.port, self.security = host, port, security
        if security not in SECURITIES:
            choices = " or ".join(SECURITIES)
            raise ConfigError(f"{self.where}: smtp_security must be {choices}, not {security!r}")
        if username and security == "plain" and not allow_insecure_auth:
            raise ConfigError(
                f"{self.where}: refusing to send the SMTP password without TLS; use starttls or "
                "ssl, or set smtp_allow_insecure_auth for a server you trust on this network"
            )
        self._username, self._password = username, password
        self._timeout, self._local_hostname = timeout, local_hostname
        self._tls = None if security == "plain" else _tls_context(ca_bundle)
        self._conn: smtplib.SMTP | None = None
        self._was_open = False  # a connection was had once: a failure to connect again is news
        self._begun: _Begun | None = None  # the message between `begin` and `transmit`
        self._owed_size: int | None = None  # the size of a message whose answer is owed

    @classmethod
    def from_settings(cls, settings: Settings) -> SmtpClient:
        return cls(
            host=settings.smtp_host,
            port=settings.smtp_port,
            security=cast(Security, settings.effective_smtp_security),
            username=settings.smtp_username,
            password=settings.smtp_password.get_secret_value(),
            timeout=settings.smtp_timeout,
            ca_bundle=settings.smtp_ca_bundle,
            allow_insecure_auth=settings.smtp_allow_insecure_auth,
        )

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    def __repr__(self) -> str:
        return f"SmtpClient({self.where}, {self.security}, user={self._username!r})"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def send(
        self, *, sender: str, recipients: list[str], data: Content, smtputf8: bool = False
    ) -> Refused:
        """Send one message and wait for its answer: the phases below in one call. Returns the
        recipients refused while others accepted it: the caller must fail those deliveries.
        Raises an SmtpError when no recipient got it."""
        self.answer()  # whatever an earlier `transmit` still owes
        self.begin(sender=sender, recipients=recipients, data=data, smtputf8=smtputf8)
        refused = self.ready()
        self.transmit()
        self.answer()
        return refused

    def open(self) -> None:
        """Connect now, before any delivery is claimed: a server that is down or refuses us
        (421, a bad certificate) is found out while nothing is in the uncertain window."""
        self._connection()

    def begin(
        self, *, sender: str, recipients: list[str], data: Content, smtputf8: bool = False
    ) -> None:
        """Start a message. With PIPELINING its MAIL, RCPT and DATA go out now, behind the last
        message's content if its reply is still owed: content may open a group of pipelined
        commands (RFC 2920, 3.1), so the server's answer to the last message and its replies
        to this one come back in one round trip. Nothing of this message reaches anyone before
        `transmit`; what goes wrong here is raised by `ready`."""
        if not recipients:
            raise ValueError("a message needs at least one recipient")
        options = ["SMTPUTF8"] if smtputf8 else []
        pieces = (data,) if isinstance(data, bytes) else tuple(data)
        self._begun = _Begun(sender, list(recipients), pieces, options)
        if self._conn is not None:
            try:
                self._start(self._conn, self._begun)
            except (OSError, UnicodeEncodeError):
                self._begun.replies = None  # `ready` starts again, and meets the error itself

    def answer(self) -> None:
        """Read the server's answer to the last message's content, if it is still owed: returns
        if the message was accepted, raises a Permanent or TransientSmtpError if it was refused,
        and an UncertainSmtpError if the connection failed first (it may have been accepted)."""
        size, self._owed_size, conn = self._owed_size, None, self._conn
        if size is None:
            return
        try:
            if conn is None or conn.sock is None:  # None: smtplib closed it on a failed write
                raise smtplib.SMTPServerDisconnected("the connection was closed")
            code, reply = _reply(conn)
        except OSError as exc:  # SMTPServerDisconnected, a timeout, a reset
            self._discard()
            raise UncertainSmtpError(
                f"{self.where}: no reply after the message was sent ({exc}); it may have been "
                "accepted"
            ) from exc
        if code != 250:  # the transaction is over whatever the code: no RSET
            if code == 421:
                self._discard()
            raise self._reply_error("message refused", code, reply)
        log.debug("%s: message of %d bytes accepted", self.where, size)

    def ready(self) -> Refused:
        """The server's replies to the begun message's commands: the recipients it refused
        while it accepted others, the server then waiting for the content. Raises an SmtpError
        when the message cannot go (nothing of it was sent). On a connection the server closed
        meanwhile, the commands go once more over a new one; Unreachable if none can be had
        (a first connection's failure is raised as `open` raises it)."""
        begun = self._begun
        if begun is None:
            raise RuntimeError("ready() without begin()")
        try:
            try:
                raw = self._accepted(begun)
            except _StaleConnection:
                log.debug("%s: connection closed by the server meanwhile; reconnecting", self.where)
                self._discard()
                raw = self._accepted(begun)
        except (OSError, UnicodeEncodeError) as exc:  # smtplib's errors are OSErrors
            self._begun = None
            error = self._send_error(exc)
            log.debug("%s: message from %s not sent: %s", self.where, begun.sender, error)
            raise error from exc
        refused = {addr: (code, _text(reply)) for addr, (code, reply) in raw.items()}
        log.debug(
            "%s: message from %s: %d of %d recipient(s) accepted; refused: %s",
            self.where,
            begun.sender,
            len(begun.recipients) - len(refused),
            len(begun.recipients),
            refused or "none",
        )
        return refused

    def transmit(self) -> None:
        """Send the content of the message `ready` accepted, and its final dot: from here it may
        be delivered. Its answer is owed to `answer`, which may come after the next `begin`."""
        begun, self._begun = self._begun, None
        if begun is None or self._conn is None:
            raise RuntimeError("transmit() without ready()")
        try:
            _send_content(self._conn, begun.pieces)
        except OSError as exc:  # the final dot not sent: the server takes nothing from it
            error = self._send_error(exc)
            raise error from exc
        self._owed_size = begun.size

    def abort(self) -> None:
        """Drop the begun message without its content. Once its DATA has gone out, only closing
        the connection ends the transaction with no message (RFC 5321, 3.3): the next message
        opens another."""
        begun, self._begun = self._begun, None
        if begun is not None and begun.replies is not None and begun.replies.ahead:
            self._discard()

    def _start(self, conn: smtplib.SMTP, begun: _Begun) -> None:
        """The begun message's commands, pipelined when the server offers it."""
        conn.ehlo_or_helo_if_needed()
        options = begun.options
        if conn.does_esmtp and conn.has_extn("size"):
            options = [*options, f"size={begun.size}"]
        begun.replies = _Replies(conn, _commands(conn, begun.sender, begun.recipients, options))

    def _accepted(self, begun: _Begun) -> dict[str, tuple[int, bytes]]:
        """smtplib's sendmail up to the content, step by step: every failure here is before
        anything of the message was sent."""
        try:
            conn = self._connection()
        except OutreachError as exc:
            if not self._was_open:  # the first connection: its own error, as `open` raises it
                raise
            self._begun = None  # a connection lost, not had again: not this message's fault
            raise Unreachable(exc) from exc
        replies = begun.replies
        try:
            if replies is None or replies.conn is not conn:  # not started, or on a lost one
                self._start(conn, begun)
                replies = cast(_Replies, begun.replies)
            code, reply = replies.next()
        except (smtplib.SMTPServerDisconnected, ConnectionError) as exc:
            raise _StaleConnection from exc
        if code != 250:
            replies.abandon(code)
            raise smtplib.SMTPSenderRefused(code, reply, begun.sender)
        refused: dict[str, tuple[int, bytes]] = {}
        for recipient in begun.recipients:
            code, reply = replies.next()
            if code not in (250, 251):
                refused[recipient] = (code, reply)
            if code == 421:
                replies.abandon(code)
                raise smtplib.SMTPRecipientsRefused(refused)
        if len(refused) == len(begun.recipients):
            replies.abandon(0)
            raise smtplib.SMTPRecipientsRefused(refused)
        code, reply = replies.next()
        if code != 354:
            replies.abandon(code)
            raise smtplib.SMTPDataError(code, reply)
        return refused

    def close(self) -> None:
        """Say QUIT politely; a connection that is already gone is not worth an error."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.quit()
        except OSError:
            pass
        finally:
            conn.close()
        log.debug("%s: connection closed", self.where)

    def _connection(self) -> smtplib.SMTP:
        """The open connection, or a new one."""
        if self._conn is None:
            self._conn = self._open()
            self._was_open = True
        return self._conn

    def _discard(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _open(self) -> smtplib.SMTP:
        """Connect, secure and log in; every failure is mapped to one error naming host:port."""
        log.debug("%s: connecting (%s, timeout %ss)", self.where, self.security, self._timeout)
        try:
            conn = self._dial()
        except OSError as exc:
            raise self._connect_error(exc) from exc
        try:
            self._prepare(conn)
        except OutreachError:
            conn.close()
            raise
        except OSError as exc:
            conn.close()
            raise self._connect_error(exc) from exc
        return conn

    def _dial(self) -> smtplib.SMTP:
        """The timeout applies to the socket, so to every step of the conversation after it."""
        if self.security == "ssl":
            return smtplib.SMTP_SSL(
                self.host,
                self.port,
                local_hostname=self._local_hostname,
                timeout=self._timeout,
                context=self._tls,
            )
        return smtplib.SMTP(
            self.host, self.port, local_hostname=self._local_hostname, timeout=self._timeout
        )

    def _prepare(self, conn: smtplib.SMTP) -> None:
        # Without it the next message's commands, a small write behind the content's last
        # segment, may wait in the kernel for that segment's ACK (Nagle).
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.ehlo_or_helo_if_needed()
        if self.security == "starttls":
            if not conn.has_extn("starttls"):
                raise ConfigError(
                    f"{self.where}: the server does not offer STARTTLS; refusing to send in "
                    "clear (set smtp_security to ssl, or to plain only for a local server)"
                )
            conn.starttls(context=self._tls)
            conn.ehlo()
        if self._tls is not None:
            log.debug("%s: TLS established: %s", self.where, _tls_summary(conn))
        if self._username:
            conn.login(self._username, self._password)
            log.debug("%s: logged in as %s", self.where, self._username)

    def _connect_error(self, exc: OSError) -> OutreachError:
        """Map a failure before any message: what retrying cannot fix is a ConfigError."""
        if isinstance(exc, ssl.SSLCertVerificationError):
            return ConfigError(
                f"{self.where}: TLS certificate verify failed ({exc.verify_message}); "
                "set smtp_ca_bundle to the CA that issued the server's certificate"
            )
        if isinstance(exc, smtplib.SMTPAuthenticationError) and exc.smtp_code >= 500:
            return ConfigError(
                f"{self.where}: login as {self._username!r} refused: "
                f"{exc.smtp_code} {_text(exc.smtp_error)}"
            )
        if isinstance(exc, smtplib.SMTPResponseException):
            return self._reply_error("while connecting", exc.smtp_code, exc.smtp_error)
        if isinstance(exc, smtplib.SMTPNotSupportedError):
            return ConfigError(f"{self.where}: {exc} (needed to log in as {self._username!r})")
        return TransientSmtpError(f"{self.where}: cannot connect: {exc}")

    def _send_error(self, exc: OSError | UnicodeEncodeError) -> SmtpError:
        """Map a failure of one message; the connection stays open where smtplib kept it."""
        if isinstance(exc, smtplib.SMTPRecipientsRefused):
            return self._all_refused(exc.recipients)
        if isinstance(exc, smtplib.SMTPSenderRefused):
            return self._reply_error("sender refused", exc.smtp_code, exc.smtp_error)
        if isinstance(exc, smtplib.SMTPResponseException):
            return self._reply_error("message refused", exc.smtp_code, exc.smtp_error)
        if isinstance(exc, smtplib.SMTPNotSupportedError | UnicodeEncodeError):
            return PermanentSmtpError(f"{self.where}: cannot send this message: {exc}")
        self._discard()  # SMTPServerDisconnected (smtplib's name for timeouts and resets too)
        return TransientSmtpError(f"{self.where}: connection lost: {exc}")

    def _reply_error(self, what: str, code: int, reply: bytes | str) -> SmtpError:
        text = _text(reply)
        return classify(code)(f"{self.where}: {what}: {code} {text}", code=code, reply=text)

    def _all_refused(self, recipients: dict[str, tuple[int, bytes]]) -> SmtpError:
        """No recipient accepted: transient if any of them may accept later."""
        replies = {addr: (code, _text(reply)) for addr, (code, reply) in recipients.items()}
        detail = "; ".join(f"{addr}: {code} {text}" for addr, (code, text) in replies.items())
        codes = [code for code, _ in replies.values()]
        code = next((c for c in codes if classify(c) is TransientSmtpError), codes[0])
        return classify(code)(
            f"{self.where}: all recipients refused: {detail}", code=code, reply=detail
        )


class _StaleConnection(smtplib.SMTPServerDisconnected):
    """MAIL FROM met a closed connection: nothing of the message was sent."""


def _commands(
    conn: smtplib.SMTP, sender: str, recipients: list[str], options: list[str]
) -> list[str]:
    """MAIL, a RCPT per recipient and DATA, as smtplib's `mail` and `rcpt` spell them."""
    if any(o.lower() == "smtputf8" for o in options):
        if not conn.has_extn("smtputf8"):
            raise smtplib.SMTPNotSupportedError("SMTPUTF8 not supported by server")
        conn.command_encoding = "utf-8"
    extra = " " + " ".join(options) if options and conn.does_esmtp else ""
    mail = f"mail FROM:{_path(sender)}{extra}"
    return [mail, *(f"rcpt TO:{_path(r)}" for r in recipients), "data"]


_PLAIN_ADDRESS = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9.-]+")


def _path(address: str) -> str:
    """`<address>`, as smtplib's `quoteaddr` spells it; its parse (`email.utils.parseaddr`),
    4 % of the send loop's CPU, is left to addresses that are not plain ASCII atoms."""
    if _PLAIN_ADDRESS.fullmatch(address):
        return f"<{address}>"
    return smtplib.quoteaddr(address)


@dataclass
class _Begun:
    """A message between `begin` and `transmit`; `replies` once its commands are started."""

    sender: str
    recipients: list[str]
    pieces: tuple[bytes, ...]
    options: list[str]
    replies: _Replies | None = None

    @property
    def size(self) -> int:
        return sum(map(len, self.pieces))


class _Replies:
    """The replies to a transaction's commands, in order. With PIPELINING (RFC 2920), when
    the server offers it, the commands go in one write (`ahead`) and the replies are read after
    it: one round trip where there were two plus one a recipient (the DATA reply, 354 or a
    refusal after refused recipients, still decides whether the message goes). Without it,
    each command is sent when its reply is asked for."""

    def __init__(self, conn: smtplib.SMTP, commands: list[str]) -> None:
        for command in commands:
            if "\r" in command or "\n" in command:  # smtplib's own check, for one write
                raise ValueError(f"a line break in an SMTP command: {command!r}")
        self.conn, self._commands, self._asked = conn, commands, 0
        self.ahead = conn.does_esmtp and conn.has_extn("pipelining")
        if self.ahead:
            conn.send("".join(f"{c}\r\n" for c in commands))

    def next(self) -> tuple[int, bytes]:
        """The reply to the next command (sending it first, if not pipelined)."""
        command = self._commands[self._asked]
        self._asked += 1
        if not self.ahead:
            self.conn.putcmd(command)
        return _reply(self.conn)

    def abandon(self, code: int) -> None:
        """End the transaction: read the replies to what was sent ahead (a DATA the server
        accepted nonetheless gets an empty message, as RFC 2920 asks), then `_abandon`."""
        if self.ahead and code != 421:
            while self._asked < len(self._commands):
                if self.next()[0] == 354:  # only DATA is answered 354
                    self.conn.send(b".\r\n")
                    _reply(self.conn)
        _abandon(self.conn, code)


def _reply(conn: smtplib.SMTP) -> tuple[int, bytes]:
    """The server's next reply, our ACKs sent at once while we wait for it (Linux's
    TCP_QUICKACK, which the kernel drops again by itself). A server replies to pipelined
    commands in small writes, and one that does not set TCP_NODELAY holds the next write until
    the last is acknowledged (Nagle), which a waiting client delays by up to 40 ms (delayed
    ACK): measured with smtp-sink, the replies to the commands sent behind a message's content
    then took 1.3 to 1.9 ms a message, against 0.01 with it."""
    if _QUICKACK is not None and conn.sock is not None:
        conn.sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
    return conn.getreply()


_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only


def _abandon(conn: smtplib.SMTP, code: int) -> None:
    """End a failed transaction as smtplib does: RSET, or close after a 421."""
    try:
        if code == 421:
            conn.close()
        else:
            conn.rset()
    except smtplib.SMTPServerDisconnected:
        pass


def _send_content(conn: smtplib.SMTP, pieces: Sequence[bytes]) -> None:
    """A message's content and its final dot, each piece dot-stuffed and sent as it is (the
    kernel told more follows: full segments, not one a piece), never joined into a copy."""
    sock = conn.sock
    if sock is None:
        raise smtplib.SMTPServerDisconnected("the connection was closed")
    more = 0 if isinstance(sock, ssl.SSLSocket) else _MSG_MORE  # TLS takes no flags
    line_start, ends_line = True, False
    for piece in pieces:
        if piece:
            sock.sendall(_dot_stuffed(piece, line_start), more)
            line_start, ends_line = piece.endswith(b"\n"), piece.endswith(b"\r\n")
    sock.sendall(b".\r\n" if ends_line else b"\r\n.\r\n")


_MSG_MORE: int = getattr(socket, "MSG_MORE", 0)  # Linux only


def _dot_stuffed(data: bytes, line_start: bool) -> bytes:
    """A dot that starts a line is doubled (RFC 5321 4.5.2); `line_start`: whether `data`
    starts one (a piece after one that did not end its line does not). Most messages have no
    such dot: dots are few (base64 has none), so each is found with `find` and what precedes it
    checked, 4 us for the benchmark's 140 KB message, where searching for "\\n." takes 97 (a
    line break every 78 bytes defeats the search's skips) and a multiline regular expression
    a millisecond."""
    at = data.find(b".")
    while at >= 0 and not (data[at - 1] == 0x0A if at else line_start):
        at = data.find(b".", at + 1)
    if at < 0:
        return data
    stuffed = data.replace(b"\n.", b"\n..")
    return b"." + stuffed if line_start and stuffed.startswith(b".") else stuffed


def _tls_context(ca_bundle: Path | None) -> ssl.SSLContext:
    """Verifying, hostname checked: the system's CAs, or only the bundle's when one is given."""
    try:
        return ssl.create_default_context(cafile=ca_bundle)
    except OSError as exc:  # a missing file or a bundle that is not PEM (ssl.SSLError)
        raise ConfigError(f"smtp_ca_bundle {ca_bundle}: cannot load: {exc}") from exc


def _tls_summary(conn: smtplib.SMTP) -> str:
    sock = conn.sock
    if not isinstance(sock, ssl.SSLSocket):
        return "none"
    cipher = sock.cipher()
    return f"{sock.version()}, {cipher[0] if cipher else 'no cipher'}"


def _text(reply: bytes | str) -> str:
    """The server's words as one line of text, whatever bytes it sent."""
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    return " ".join(text.split())
