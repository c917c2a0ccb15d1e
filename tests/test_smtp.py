"""SmtpClient against a real SMTP server (tests/smtpd.py): reuse, TLS, AUTH, how failures sort."""

from __future__ import annotations

import base64
import logging
import random
import smtplib
import socket
import string
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from outreach.config import load_settings
from outreach.errors import (
    ConfigError,
    PermanentSmtpError,
    TransientSmtpError,
    UncertainSmtpError,
    Unreachable,
)
from outreach.smtp import SmtpClient, _path, classify
from tests.smtpd import PASSWORD, USERNAME, BadServer, Pki, RecordingServer

SENDER = "office@odfoundation.example"
TO = "minister@gov.example"
OTHER = "secretary@gov.example"
MESSAGE = (
    b"From: Open Dialog <office@odfoundation.example>\r\n"
    b"To: minister@gov.example\r\n"
    b"Subject: An open letter\r\n"
    b"\r\n"
    b"Dear Minister,\r\n"
    b".a line that starts with a dot\r\n"
)

TlsServer = Callable[..., RecordingServer]


@pytest.fixture(params=["pipelining", "lockstep"])
def smtp_server(request: pytest.FixtureRequest) -> Iterator[RecordingServer]:
    """Every transaction test against a server that offers PIPELINING and one that does not:
    the client takes the one path or the other, and each must sort replies the same way."""
    with RecordingServer(pipelining=request.param == "pipelining") as server:
        yield server


def client_for(server: RecordingServer, **overrides: Any) -> SmtpClient:
    """A client for this server, through the settings, as the workers make theirs."""
    return SmtpClient.from_settings(load_settings(**{**server.settings_overrides(), **overrides}))


def send(client: SmtpClient, *recipients: str, data: bytes = MESSAGE) -> dict:
    return client.send(sender=SENDER, recipients=list(recipients or [TO]), data=data)


def test_classify_4xx_transient_else_permanent() -> None:
    assert classify(421) is TransientSmtpError
    assert classify(451) is TransientSmtpError
    assert classify(550) is PermanentSmtpError
    assert classify(554) is PermanentSmtpError


def test_one_connection_for_many_messages(smtp_server: RecordingServer) -> None:
    with client_for(smtp_server) as client:
        for _ in range(3):
            assert send(client) == {}
    assert smtp_server.connections == 1
    assert [m.data for m in smtp_server.messages] == [MESSAGE] * 3
    assert smtp_server.messages[0].mail_from == SENDER
    assert smtp_server.messages[0].rcpt_tos == [TO]


@pytest.mark.parametrize("security", ["starttls", "ssl"])
def test_tls_and_auth_with_the_ca_bundle(tls_smtp_server: TlsServer, security: str) -> None:
    server = tls_smtp_server(security)
    with client_for(server) as client:
        assert send(client) == {}
    [message] = server.messages
    assert (message.tls, message.login, message.data) == (True, USERNAME, MESSAGE)
    assert server.logins == [(USERNAME, True)]


@pytest.mark.parametrize("security", ["starttls", "ssl"])
@pytest.mark.parametrize("trusted", ["other CA", "system CAs"])
def test_untrusted_certificate_refused_before_anything_is_sent(
    tls_smtp_server: TlsServer, smtp_pki: Pki, security: str, trusted: str
) -> None:
    server = tls_smtp_server(security)
    ca_bundle = smtp_pki.other_ca_pem if trusted == "other CA" else None
    client = client_for(server, smtp_ca_bundle=ca_bundle)
    with client, pytest.raises(ConfigError, match="certificate verify failed") as caught:
        send(client)
    assert server.where in str(caught.value)
    assert (server.messages, server.logins) == ([], [])


def test_starttls_required_but_not_offered(smtp_server: RecordingServer) -> None:
    client = client_for(smtp_server, smtp_security="starttls")
    with client, pytest.raises(ConfigError, match="does not offer STARTTLS") as caught:
        send(client)
    assert smtp_server.where in str(caught.value)
    assert smtp_server.messages == []


def test_no_auth_without_tls(tls_smtp_server: TlsServer) -> None:
    server = tls_smtp_server("plain", auth_require_tls=False)
    with pytest.raises(ConfigError, match="without TLS"):
        client_for(server, smtp_allow_insecure_auth=False)
    assert server.connections == 0


def test_auth_without_tls_when_allowed(tls_smtp_server: TlsServer) -> None:
    server = tls_smtp_server("plain", auth_require_tls=False)
    with client_for(server, smtp_allow_insecure_auth=True) as client:
        send(client)
    assert [(m.login, m.tls) for m in server.messages] == [(USERNAME, False)]


def test_wrong_password_is_a_config_error(tls_smtp_server: TlsServer) -> None:
    server = tls_smtp_server("starttls")
    client = client_for(server, smtp_password="not-it")
    with client, pytest.raises(ConfigError, match="login as 'outreach-test' refused: 535"):
        send(client)
    assert server.messages == []


def test_password_in_no_log_record(
    tls_smtp_server: TlsServer, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture
) -> None:
    """Nor on stderr, where smtplib's debuglevel would print the AUTH line."""
    caplog.set_level(logging.DEBUG)
    server = tls_smtp_server("starttls")
    with client_for(server) as client:
        send(client)
    assert server.logins == [(USERNAME, True)]
    assert any(r.name == "outreach.smtp" for r in caplog.records)
    secrets = [
        PASSWORD,
        base64.b64encode(PASSWORD.encode()).decode(),
        base64.b64encode(f"\0{USERNAME}\0{PASSWORD}".encode()).decode(),
    ]
    logged = caplog.text + "\n".join(r.getMessage() for r in caplog.records)
    logged += "".join(capsys.readouterr())
    assert [s for s in secrets if s in logged] == []


def test_commands_pipelined_only_when_offered(smtp_server: RecordingServer) -> None:
    """MAIL, RCPT and DATA in one write when the server offers PIPELINING: one round trip,
    where there are three without it."""
    with client_for(smtp_server) as client:
        send(client, TO, OTHER)
        send(client)
    assert smtp_server.ahead_of_mail == [smtp_server.pipelining] * 2
    assert [m.rcpt_tos for m in smtp_server.messages] == [[TO, OTHER], [TO]]
    assert smtp_server.messages[0].data == MESSAGE  # its leading dot stuffed and unstuffed


@pytest.mark.parametrize(
    "body",
    [
        b"no dot anywhere\r\n",
        b"dots.inside.lines only.\r\n",
        b".\r\n",  # a lone dot would end the message unstuffed
        b"a line\r\n.\r\nafter the lone dot\r\n",
        b"..two dots\r\n...three\r\nend.\r\n",
    ],
)
def test_what_arrives_is_what_was_sent_whatever_its_dots(
    smtp_server: RecordingServer, body: bytes
) -> None:
    data = b"Subject: dots\r\n\r\n" + body
    with client_for(smtp_server) as client:
        send(client, data=data)
        send(client, data=body)  # a message that starts with a dot
    assert [m.data for m in smtp_server.messages] == [data, body]


@pytest.mark.parametrize(
    "pieces",
    [
        [b"Subject: pieces\r\n\r\n", b".starts a line\r\n", b"a line"],  # no line end
        [b"Subject: pieces\r\n\r\nhalf a line ", b".not at a line start\r\n"],
        [b"Subject: pieces\r\n\r\nends in CR\r", b"\n.after the LF\r\n", b"", b".\r\n"],
        [b".", b".\r\n", b"x.\r\n"],
    ],
)
def test_a_message_in_pieces_arrives_as_its_joined_bytes(
    smtp_server: RecordingServer, pieces: list[bytes]
) -> None:
    """The send loop hands over a message in pieces (`compose.compose_pieces`): each is
    dot-stuffed knowing whether it starts a line, and the final dot follows the last line."""
    with client_for(smtp_server) as client:
        client.send(sender=SENDER, recipients=[TO], data=pieces)
    joined = b"".join(pieces)
    expected = joined if joined.endswith(b"\r\n") else joined + b"\r\n"
    assert [m.data for m in smtp_server.messages] == [expected]


def start(client: SmtpClient, *recipients: str) -> None:
    """A message begun, accepted and its content sent; its answer left owed."""
    client.begin(sender=SENDER, recipients=list(recipients or [TO]), data=MESSAGE)
    assert client.ready() == {}
    client.transmit()


def test_next_commands_go_out_behind_the_content_before_its_answer(
    smtp_server: RecordingServer,
) -> None:
    """The next message's MAIL, RCPT and DATA follow the last one's final dot without waiting
    for its answer (RFC 2920: content may open a group): one round trip a message."""
    smtp_server.answer_delay = 0.3
    with client_for(smtp_server) as client:
        start(client, TO)
        client.begin(sender=SENDER, recipients=[OTHER], data=MESSAGE)
        client.answer()
        assert client.ready() == {}
        client.transmit()
        client.answer()
    assert smtp_server.ahead_of_answer == [smtp_server.pipelining, False]
    assert [m.rcpt_tos for m in smtp_server.messages] == [[TO], [OTHER]]
    assert smtp_server.connections == 1


def test_a_message_begun_then_aborted_sends_nothing_of_it(smtp_server: RecordingServer) -> None:
    """A message begun behind another, then dropped (the send loop's claim missed): nothing of
    it reaches anyone. With its DATA already answered 354, only closing the connection ends
    it; the next message opens another."""
    with client_for(smtp_server) as client:
        start(client, TO)
        client.begin(sender=SENDER, recipients=[OTHER], data=MESSAGE)
        client.answer()
        client.abort()
        assert send(client) == {}
    assert [m.rcpt_tos for m in smtp_server.messages] == [[TO], [TO]]
    assert smtp_server.connections == (2 if smtp_server.pipelining else 1)


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "lockstep"])
def test_a_server_that_refuses_us_on_reconnecting_is_unreachable(pipelining: bool) -> None:
    """The server closed the connection between two messages and greets the new one with 554:
    the second message is not refused (its recipient is not why), the server is unreachable."""
    server = RecordingServer(pipelining=pipelining).start()
    with client_for(server) as client:
        assert send(client) == {}
        server.stop()  # closes the connection, frees the port
        with BadServer(greeting="554 5.7.1 access denied", port=server.port) as refusing:
            client.begin(sender=SENDER, recipients=[OTHER], data=MESSAGE)
            with pytest.raises(Unreachable) as caught:
                client.ready()
        assert isinstance(caught.value.error, PermanentSmtpError)
        assert "554 5.7.1 access denied" in str(caught.value)
        assert refusing.connections == 1
    assert [m.rcpt_tos for m in server.messages] == [[TO]]


@pytest.mark.parametrize("hangup", ["close", "reset"])
def test_silence_after_the_dot_with_the_next_message_begun(
    smtp_server: RecordingServer, hangup: str
) -> None:
    """The server hangs up instead of answering the first message: closing after the second
    one's commands went out, or resetting before (writing them then fails, and smtplib closes
    its socket). The first is uncertain either way, the second goes over a new connection."""
    if hangup == "close":
        smtp_server.drop_at_data(TO, times=1)
    else:
        smtp_server.reset_at_data(TO, times=1)
    with client_for(smtp_server) as client:
        start(client, TO)
        if hangup == "reset":
            time.sleep(0.5)  # the reset arrives before the next commands are written
        client.begin(sender=SENDER, recipients=[OTHER], data=MESSAGE)
        with pytest.raises(UncertainSmtpError, match="may have been accepted"):
            client.answer()
        assert client.ready() == {}
        client.transmit()
        client.answer()
    assert [m.rcpt_tos for m in smtp_server.messages] == [[OTHER]]
    assert smtp_server.connections == 2


@pytest.mark.parametrize(
    ("code", "error", "connections"),
    [(554, PermanentSmtpError, 1), (451, TransientSmtpError, 1), (421, TransientSmtpError, 2)],
)
def test_content_refused_with_the_next_message_begun(
    smtp_server: RecordingServer, code: int, error: type[Exception], connections: int
) -> None:
    """A refusal of the content ends its transaction, not the next one already begun: no RSET
    after it (which would reset the next); after a 421 the next goes over a new connection."""
    smtp_server.fail_data(TO, code, "said the server", times=1)
    with client_for(smtp_server) as client:
        start(client, TO)
        client.begin(sender=SENDER, recipients=[OTHER], data=MESSAGE)
        with pytest.raises(error, match=f"{code} said the server"):
            client.answer()
        assert client.ready() == {}
        client.transmit()
        client.answer()
    assert [m.rcpt_tos for m in smtp_server.messages] == [[OTHER]]
    assert smtp_server.connections == connections


def test_one_recipient_refused_the_other_gets_it(smtp_server: RecordingServer) -> None:
    smtp_server.fail_rcpt(OTHER, 550, "5.1.1 No such mailbox here")
    with client_for(smtp_server) as client:
        refused = send(client, TO, OTHER)
    assert refused == {OTHER: (550, "5.1.1 No such mailbox here")}
    assert [m.rcpt_tos for m in smtp_server.messages] == [[TO]]


def test_only_recipient_refused_is_permanent(smtp_server: RecordingServer) -> None:
    smtp_server.fail_rcpt(TO, 550, "5.1.1 No such mailbox here")
    with client_for(smtp_server) as client:
        with pytest.raises(PermanentSmtpError) as caught:
            send(client)
        assert send(client, OTHER) == {}  # the connection is still good
    assert caught.value.code == 550
    assert "5.1.1 No such mailbox here" in caught.value.reply
    assert smtp_server.where in str(caught.value) and TO in str(caught.value)
    assert smtp_server.connections == 1


def test_data_answered_354_after_every_recipient_refused_gets_no_message() -> None:
    """A pipelining client has sent DATA before it reads the RCPT replies; a server may still
    answer it 354 (RFC 2920). The client then ends the empty DATA at once: nothing of the
    letter reaches the server, the refusal is the recipient's, and the connection goes on."""
    with RecordingServer(pipelining=True, data_after_refusals=True) as server:
        server.fail_rcpt(TO, 550, "5.1.1 No such mailbox here", times=1)
        with client_for(server) as client:
            with pytest.raises(PermanentSmtpError, match="all recipients refused") as caught:
                send(client)
            assert send(client) == {}
    assert caught.value.code == 550
    assert server.sent_after_refusals == [b""]
    assert [m.rcpt_tos for m in server.messages] == [[TO]]
    assert server.connections == 1


def test_all_refused_with_a_4xx_among_them_is_transient(smtp_server: RecordingServer) -> None:
    smtp_server.fail_rcpt(TO, 550, "5.1.1 No such mailbox here")
    smtp_server.fail_rcpt(OTHER, 451, "4.2.0 Mailbox busy")
    with client_for(smtp_server) as client, pytest.raises(TransientSmtpError) as caught:
        send(client, TO, OTHER)
    assert caught.value.code == 451
    assert f"{TO}: 550" in str(caught.value) and f"{OTHER}: 451" in str(caught.value)


@pytest.mark.parametrize(
    ("stage", "code", "error"),
    [
        ("rcpt", 451, TransientSmtpError),
        ("data", 451, TransientSmtpError),
        ("data", 554, PermanentSmtpError),
    ],
)
def test_reply_codes_sort_into_transient_and_permanent(
    smtp_server: RecordingServer, stage: str, code: int, error: type[Exception]
) -> None:
    fail = smtp_server.fail_rcpt if stage == "rcpt" else smtp_server.fail_data
    fail(TO, code, "said the server")
    with client_for(smtp_server) as client, pytest.raises(error) as caught:
        send(client)
    assert caught.value.code == code
    assert caught.value.reply.endswith(
        f"{code} said the server" if stage == "rcpt" else "said the server"
    )
    assert smtp_server.where in str(caught.value)


def test_silence_after_the_final_dot_is_uncertain_and_the_next_send_reconnects(
    smtp_server: RecordingServer,
) -> None:
    """The server read the whole message, then hung up: it may have accepted it."""
    smtp_server.drop_at_data(TO, times=1)
    with client_for(smtp_server) as client:
        with pytest.raises(UncertainSmtpError, match="may have been accepted"):
            send(client)
        assert send(client) == {}
    assert len(smtp_server.messages) == 1
    assert smtp_server.connections == 2


@pytest.mark.parametrize(
    ("stage", "address", "reply", "error", "connections"),
    [
        ("mail", SENDER, "553 5.7.1 Sender not allowed", PermanentSmtpError, 1),
        ("rcpt", TO, "421 4.3.2 shutting down", TransientSmtpError, 2),
    ],
)
def test_a_refusal_then_the_next_send_goes_through(
    smtp_server: RecordingServer,
    stage: str,
    address: str,
    reply: str,
    error: type[Exception],
    connections: int,
) -> None:
    """A refused MAIL keeps the connection (the replies to what was pipelined after it are
    read, then RSET); a 421 closes it, and the next send reconnects."""
    code, text = reply.split(" ", 1)
    fail = smtp_server.fail_mail if stage == "mail" else smtp_server.fail_rcpt
    fail(address, int(code), text, times=1)
    with client_for(smtp_server) as client:
        with pytest.raises(error, match=code):
            send(client)
        assert send(client) == {}
    assert len(smtp_server.messages) == 1
    assert smtp_server.connections == connections


def test_connection_closed_while_idle_is_reopened_without_error(
    smtp_server: RecordingServer,
) -> None:
    with client_for(smtp_server) as client:
        send(client)
        smtp_server.drop_connections()
        send(client)
    assert len(smtp_server.messages) == 2
    assert smtp_server.connections == 2


def test_smtputf8_when_asked(smtp_server: RecordingServer) -> None:
    address = "ministre@gouvernement.example"
    with client_for(smtp_server) as client:
        client.send(
            sender="büro@odfoundation.example", recipients=[address], data=MESSAGE, smtputf8=True
        )
    [message] = smtp_server.messages
    assert message.mail_from == "büro@odfoundation.example"
    assert "SMTPUTF8" in message.mail_options


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections (the kernel does) and never says a word."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        yield listener.getsockname()[1]


def test_server_that_never_greets_times_out(silent_port: int) -> None:
    client = SmtpClient(host="127.0.0.1", port=silent_port, security="plain", timeout=1.0)
    started = time.monotonic()
    with pytest.raises(TransientSmtpError, match=f"127.0.0.1:{silent_port}"):
        send(client)
    assert time.monotonic() - started < 5


def test_connection_refused_is_transient() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]  # closed when the block ends: nobody listens there
    client = SmtpClient(host="127.0.0.1", port=port, security="plain", timeout=1.0)
    with pytest.raises(TransientSmtpError, match=f"127.0.0.1:{port}: cannot connect"):
        send(client)


def test_missing_ca_bundle_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="smtp_ca_bundle"):
        SmtpClient(
            host="mail.example", port=465, security="ssl", timeout=1, ca_bundle=tmp_path / "no.pem"
        )


def test_envelope_addresses_are_spelled_as_smtplib_spells_them() -> None:
    """The fast path for plain addresses gives what smtplib.quoteaddr gives, odd dots, quotes,
    display names and non-ASCII included."""
    rng = random.Random(5)
    atoms = string.ascii_letters + string.digits + "!#$%&'*+/=?^_`{|}~.-"
    odd = ['"a b"@x.example', "Ö@x.example", "A <a@x.example>", "<a@x.example>", "a@[10.0.0.1]"]
    addresses = [*odd, "", "<>", "a@", "@x", ".a@x", "a.@x", "a..b@x.example", "a@x..example"]
    for _ in range(3000):
        local = "".join(rng.choice(atoms) for _ in range(rng.randint(1, 12)))
        labels = string.ascii_lowercase + ".-"
        domain = "".join(rng.choice(labels) for _ in range(rng.randint(1, 9)))
        addresses.append(f"{local}@{domain}")
    for address in addresses:
        assert _path(address) == smtplib.quoteaddr(address), address
