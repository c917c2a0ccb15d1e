"""A real MTA for tests: a private Postfix instance on 127.0.0.1, to make real bounces.

The fixture writes main.cf and master.cf in a folder of its own (queue and data directories
too), and starts it with `postfix -c <folder> start`. Postfix accepts mail for LOCAL_DOMAINS
for any local part (empty local_recipient_maps), so a message to a missing user is accepted and
then bounced by local(8): a real RFC 3464 report, sent to the message's envelope sender through
the relay host, which is a recording aiosmtpd server of the test. Loopback only, no DNS.

A Postfix master must start as root (it then runs as the `postfix` user): elsewhere the fixture
skips, saying so.
"""

from __future__ import annotations

import os
import pwd
import shutil
import smtplib
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.dovecot import free_port
from tests.smtpd import Received, RecordingServer

DOMAIN = "dest.test"
# Local here, so that mail to these recipients' addresses bounces: none of their users exist.
LOCAL_DOMAINS = (DOMAIN, "bundestag.de", "coe.int")
SERVICES = """\
{port} inet n - n - - smtpd
pickup    unix  n  -  n  60    1  pickup
cleanup   unix  n  -  n  -     0  cleanup
qmgr      unix  n  -  n  300   1  qmgr
rewrite   unix  -  -  n  -     -  trivial-rewrite
bounce    unix  -  -  n  -     0  bounce
defer     unix  -  -  n  -     0  bounce
trace     unix  -  -  n  -     0  bounce
verify    unix  -  -  n  -     1  verify
flush     unix  n  -  n  1000  0  flush
proxymap  unix  -  -  n  -     -  proxymap
smtp      unix  -  -  n  -     -  smtp
relay     unix  -  -  n  -     -  smtp
showq     unix  n  -  n  -     -  showq
error     unix  -  -  n  -     -  error
retry     unix  -  -  n  -     -  error
discard   unix  -  -  n  -     -  discard
local     unix  -  n  n  -     -  local
anvil     unix  -  -  n  -     1  anvil
scache    unix  -  -  n  -     1  scache
postlog   unix-dgram n  -  n  -  1  postlogd
"""


def _main_cf(folder: Path, relay_port: int) -> str:
    return f"""\
compatibility_level = 3.6
queue_directory = {folder}/queue
data_directory = {folder}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = mx.{DOMAIN}
mydomain = {DOMAIN}
myorigin = {DOMAIN}
mydestination = {", ".join(LOCAL_DOMAINS)}
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
local_recipient_maps =
alias_maps =
alias_database =
relayhost = [127.0.0.1]:{relay_port}
smtp_dns_support_level = disabled
smtp_tls_security_level = none
smtpd_tls_security_level = none
smtputf8_enable = no
biff = no
maillog_file = {folder}/maillog
maillog_file_prefixes = {folder}
"""


@dataclass
class Postfix:
    port: int
    folder: Path
    relay: RecordingServer  # where Postfix sends its bounces

    def send(self, mail_from: str, rcpt: str, data: bytes) -> None:
        with smtplib.SMTP("127.0.0.1", self.port, timeout=10) as smtp:
            smtp.sendmail(mail_from, [rcpt], data)

    def bounces(self, count: int, timeout: float = 30.0) -> list[Received]:
        """Wait until the relay has received `count` messages from Postfix."""
        deadline = time.monotonic() + timeout
        while len(self.relay.messages) < count and time.monotonic() < deadline:
            time.sleep(0.1)
        if len(self.relay.messages) < count:
            log = (
                (self.folder / "maillog").read_text() if (self.folder / "maillog").exists() else ""
            )
            raise AssertionError(f"Postfix sent {len(self.relay.messages)} of {count}:\n{log}")
        return self.relay.messages


def _run(folder: Path, *args: str) -> None:
    result = subprocess.run(["postfix", "-c", str(folder / "conf"), *args], capture_output=True)
    if result.returncode != 0:
        log = (folder / "maillog").read_text() if (folder / "maillog").exists() else ""
        raise RuntimeError(f"postfix {' '.join(args)} failed:\n{result.stderr!r}\n{log}")


@pytest.fixture
def postfix(smtp_server: RecordingServer) -> Iterator[Postfix]:
    """A private Postfix on a free loopback port, its bounces relayed to `smtp_server`."""
    if shutil.which("postfix") is None:
        pytest.fail("postfix is not installed (Debian: apt-get install postfix)")
    if os.getuid() != 0:
        pytest.skip("a private Postfix instance must be started as root")
    folder = Path(tempfile.mkdtemp(prefix="outreach-postfix-"))  # Postfix's users must reach it
    os.chmod(folder, 0o755)  # noqa: S103 - the server's own users must reach it
    owner = pwd.getpwnam("postfix")
    for name in ("conf", "queue", "data"):
        (folder / name).mkdir()
    os.chown(folder / "data", owner.pw_uid, owner.pw_gid)
    port = free_port()
    (folder / "conf" / "main.cf").write_text(_main_cf(folder, smtp_server.port))
    (folder / "conf" / "master.cf").write_text(SERVICES.format(port=f"127.0.0.1:{port}"))
    _run(folder, "check")
    _run(folder, "start")
    try:
        _wait(port)
        yield Postfix(port=port, folder=folder, relay=smtp_server)
    finally:
        _run(folder, "stop")
        shutil.rmtree(folder, ignore_errors=True)


def _wait(port: int) -> None:
    for _ in range(100):
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=2) as smtp:
                smtp.noop()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"Postfix did not listen on {port}")
