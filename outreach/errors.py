"""The one tree of errors outreach raises.

    OutreachError                 anything outreach refuses or cannot do; the CLI prints one line
    ├── ConfigError               a setting is missing or malformed
    ├── InputError                user input is wrong: says where (file, row, field)
    │   ├── ImportRowError        a recipient row that cannot be imported (collected per file)
    │   └── HeaderError           a header value with CR/LF or otherwise unusable
    ├── TemplateError             a letter template cannot be rendered (recipient, template, line)
    ├── AttachmentError           an attachment is missing or outside the template folder
    ├── NotFound                  a named campaign, recipient or delivery does not exist
    ├── TransitionError           a delivery status change the state machine forbids
    ├── Conflict                  another process changed the campaign while a command ran
    ├── InboxError                the team's mailbox cannot be read (connection, TLS, login)
    └── SmtpError                 the SMTP conversation failed
        ├── TransientSmtpError    4xx, timeout, dropped connection: try again later
        ├── PermanentSmtpError    5xx: this message will never be accepted as it is
        └── UncertainSmtpError    silence after the message's final dot: it may have been
                                  accepted, so it is never retried without an operator

Foreign errors (csv, jinja2, smtplib, socket, ssl) are mapped where they enter, with their place
in the message, and raised `from` the original.
"""

from __future__ import annotations


class OutreachError(Exception):
    """Anything outreach refuses or cannot do. `exit_code` is what the CLI exits with."""

    exit_code = 1


class ConfigError(OutreachError):
    exit_code = 78  # EX_CONFIG


class InputError(OutreachError):
    exit_code = 65  # EX_DATAERR


class ImportRowError(InputError):
    """One bad field of one row; the registry collects these and reports them all at once."""

    def __init__(self, source: str, row: int, field: str, reason: str) -> None:
        self.source, self.row, self.field, self.reason = source, row, field, reason
        super().__init__(f"{source}: row {row}: {field}: {reason}")


class HeaderError(InputError):
    pass


class TemplateError(OutreachError):
    exit_code = 65


class AttachmentError(OutreachError):
    exit_code = 66  # EX_NOINPUT


class NotFound(OutreachError):
    exit_code = 66


class TransitionError(OutreachError):
    exit_code = 70  # EX_SOFTWARE


class Conflict(OutreachError):
    """Another process moved the campaign between this command's read and its write; the
    command changed nothing, and running it again decides on the campaign as it now is."""

    exit_code = 75  # EX_TEMPFAIL


class InboxError(OutreachError):
    exit_code = 69  # EX_UNAVAILABLE


class SmtpError(OutreachError):
    """The SMTP conversation failed; `code` and `reply` keep the server's words when it spoke."""

    exit_code = 69  # EX_UNAVAILABLE

    def __init__(self, message: str, code: int | None = None, reply: str = "") -> None:
        self.code, self.reply = code, reply
        super().__init__(message)


class TransientSmtpError(SmtpError):
    pass


class PermanentSmtpError(SmtpError):
    pass


class UncertainSmtpError(SmtpError):
    pass


class Unreachable(SmtpError):
    """A new connection for a message could not be had (the old one was closed meanwhile):
    nothing of the message was sent, and the next ones would meet the same. `error`: why, as
    opening the connection raises it (a refusal, a timeout, a certificate, a login)."""

    def __init__(self, error: OutreachError) -> None:
        self.error = error
        super().__init__(f"cannot reconnect: {error}")
