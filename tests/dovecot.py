"""A real IMAP server for tests: Debian's Dovecot 2.3 on 127.0.0.1, implicit TLS, a test CA.

The fixture writes a configuration of its own (Dovecot 2.3 syntax: `ssl_cert = <file`,
`mail_location`, `passdb { driver = passwd-file }`; 2.4 renamed most of these, so the fixture
refuses another major version rather than start a server configured by mistake), starts
`dovecot -F -c <config>` on a free loopback port, and stops it after the test. One user with a
Maildir; messages are put in with IMAP APPEND, as a delivery agent would leave them.

As root, Dovecot refuses to give mail to uid 0: the Maildir then belongs to the `dovecot`
system user. Dovecot's users must reach its files: they live in a folder of their own outside
pytest's private tmp tree, removed after the test.
"""

from __future__ import annotations

import imaplib
import os
import pwd
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.smtpd import Pki

USERNAME = "team"
PASSWORD = "imap-Tr0ub4dor&3"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    for _ in range(100):
        if process.poll() is not None:
            break
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    text = log.read_text() if log.exists() else ""
    raise RuntimeError(f"dovecot did not listen on {port}:\n{text}")


def dovecot_version() -> str:
    result = subprocess.run(["dovecot", "--version"], capture_output=True, text=True, check=True)
    return result.stdout.split()[0]


@dataclass
class Dovecot:
    """The running server and what a test needs to reach it."""

    port: int
    ca_pem: Path
    log: Path
    host: str = "127.0.0.1"

    def settings_overrides(self, **more: object) -> dict[str, object]:
        return {
            "imap_host": self.host,
            "imap_port": self.port,
            "imap_username": USERNAME,
            "imap_password": PASSWORD,
            "imap_ca_bundle": self.ca_pem,
            "imap_timeout": 10.0,
            **more,
        }

    def env(self) -> dict[str, str]:
        return {f"OUTREACH_{k.upper()}": str(v) for k, v in self.settings_overrides().items()}

    def client(self) -> imaplib.IMAP4_SSL:
        context = ssl.create_default_context(cafile=str(self.ca_pem))
        conn = imaplib.IMAP4_SSL(self.host, self.port, ssl_context=context, timeout=10)
        conn.login(USERNAME, PASSWORD)
        return conn

    def append(self, *messages: bytes, folder: str = "INBOX") -> None:
        conn = self.client()
        try:
            for raw in messages:
                status, data = conn.append(folder, None, None, raw)
                assert status == "OK", data
        finally:
            conn.logout()

    def flags(self, folder: str = "INBOX") -> dict[int, str]:
        """Each message's UID and flags, read without changing them."""
        conn = self.client()
        try:
            status, data = conn.select(f'"{folder}"', readonly=True)
            assert status == "OK", data
            _, found = conn.uid("SEARCH", None, "ALL")
            uids = [int(u) for u in found[0].split()]
            result: dict[int, str] = {}
            for uid in uids:
                _, fetched = conn.uid("FETCH", str(uid), "(FLAGS)")
                result[uid] = fetched[0].decode()
            return result
        finally:
            conn.logout()


def _config(folder: Path, home: Path, port: int, uid: int, gid: int) -> str:
    root = os.getuid() == 0
    login_user = "dovenull" if root else pwd.getpwuid(uid).pw_name
    internal_user = "dovecot" if root else login_user
    return f"""
base_dir = {folder}/run
state_dir = {folder}/state
log_path = {folder}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = required
ssl_cert = <{folder}/cert.pem
ssl_key = <{folder}/key.pem
default_login_user = {login_user}
default_internal_user = {internal_user}
first_valid_uid = {uid}
last_valid_uid = {uid}
first_valid_gid = {gid}
auth_mechanisms = plain
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {folder}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={home}/%u
}}
mail_location = maildir:~/Maildir
service imap-login {{
  chroot =
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {port}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
}}
"""


@pytest.fixture
def dovecot(smtp_pki: Pki) -> Iterator[Dovecot]:
    """A Dovecot IMAPS server with one empty mailbox, for one test."""
    if shutil.which("dovecot") is None:
        pytest.fail("dovecot is not installed (Debian: apt-get install dovecot-imapd)")
    version = dovecot_version()
    if not version.startswith("2.3."):
        pytest.fail(f"the fixture writes Dovecot 2.3 configuration; this is {version}")
    # Dovecot's own users read the password file and the Maildir: a folder they can reach.
    folder = Path(tempfile.mkdtemp(prefix="outreach-dovecot-"))
    os.chmod(folder, 0o755)  # noqa: S103 - the server's own users must reach it
    smtp_pki.cert.private_key_pem.write_to_path(str(folder / "key.pem"))
    (folder / "cert.pem").write_bytes(b"".join(p.bytes() for p in smtp_pki.cert.cert_chain_pems))
    (folder / "passwd").write_text(f"{USERNAME}:{{PLAIN}}{PASSWORD}\n")
    uid, gid = os.getuid(), os.getgid()
    if uid == 0:
        owner = pwd.getpwnam("dovecot")
        uid, gid = owner.pw_uid, owner.pw_gid
    home = folder / "home"
    home.mkdir()
    os.chown(home, uid, gid)
    port = free_port()
    (folder / "dovecot.conf").write_text(_config(folder, home, port, uid, gid))
    process = subprocess.Popen(
        ["dovecot", "-F", "-c", str(folder / "dovecot.conf")],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_for_port(port, process, folder / "dovecot.log")
        yield Dovecot(port=port, ca_pem=smtp_pki.ca_pem, log=folder / "dovecot.log")
    finally:
        process.terminate()
        process.wait(timeout=20)
        shutil.rmtree(folder, ignore_errors=True)
