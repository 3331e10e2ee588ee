"""Email channel over SMTP with aiosmtplib.

Install with `pip install 'contractspec-bus[email]'`.

```python
from contractspec.bus.email import EmailChannel

email = EmailChannel(hostname="smtp.example.com", port=587, sender="noreply@example.com",
                     username="...", password="...")   # STARTTLS required
```

With credentials, TLS is required, never opportunistic: implicit TLS (`use_tls=True`, port 465)
or STARTTLS that must succeed (`start_tls=None` becomes required; a server that does not offer
it is an `EmailDeliveryError` before any credential is sent). `start_tls=False` with
credentials is refused at construction. Certificates are verified (pass `tls_context=` for a
private CA).
"""

from __future__ import annotations

try:
    import aiosmtplib
except ImportError as exc:  # pragma: no cover - exercised by the isolation session
    raise ImportError(
        "contractspec.bus.email needs aiosmtplib: pip install 'contractspec-bus[email]'"
    ) from exc

import ssl
from email.message import EmailMessage
from email.utils import formataddr, make_msgid

from contractspec.bus.notifications import OutgoingMessage
from contractspec.core import ConfigurationError, ContractSpecError

__all__ = ["EmailChannel", "EmailDeliveryError"]


class EmailDeliveryError(ContractSpecError, RuntimeError):
    """The recipient has no address, or the SMTP server refused or could not be reached."""

    code = "email_delivery_failed"


class EmailChannel:
    """Sends notifications as email (plain text, plus HTML when the template has one).

    Each message carries a `Message-ID` derived from the delivery id and an
    `X-ContractSpec-Delivery` header, so retries can be recognised downstream.

    Args:
        hostname: SMTP server (port defaults to 25, 465 with `use_tls`, 587 with STARTTLS).
        port: SMTP server (port defaults to 25, 465 with `use_tls`, 587 with STARTTLS).
        sender: `From` address.
        sender_name: Optional display name of the sender.
        username: SMTP AUTH credentials.
        password: SMTP AUTH credentials.
        use_tls: Implicit TLS (SMTPS, port 465).
        start_tls: Upgrade with STARTTLS. `None` (default): required when credentials are
            given, otherwise used when the server offers it (a relay without credentials).
            `True`: required. `False`: never (refused together with credentials).
        tls_context: `ssl.SSLContext` for either kind of TLS (default: the system's trust
            store, certificates and host names verified).
        timeout: Seconds for the whole exchange.
        name: Channel name (default `email`).

    Raises:
        ConfigurationError: No `sender` or no `hostname`; only one of `username`/`password`;
            credentials with `start_tls=False` and without `use_tls` (they would be sent in
            clear); `use_tls` together with `start_tls=True`.
    """

    def __init__(
        self,
        *,
        hostname: str,
        sender: str,
        port: int | None = None,
        sender_name: str | None = None,
        username: str | None = None,
        password: str | None = None,
        use_tls: bool = False,
        start_tls: bool | None = None,
        tls_context: ssl.SSLContext | None = None,
        timeout: float = 30.0,
        name: str = "email",
    ) -> None:
        if not hostname:
            raise ConfigurationError("EmailChannel needs hostname=", details={"field": "hostname"})
        if not sender or "@" not in sender:
            raise ConfigurationError(
                f"EmailChannel needs a sender address such as 'noreply@example.com', got {sender!r}",
                details={"field": "sender"},
            )
        if (username is None) != (password is None):
            raise ConfigurationError(
                "EmailChannel needs both username= and password= for SMTP AUTH, or neither",
                details={"field": "username" if username is None else "password"},
            )
        credentials = username is not None
        if use_tls and start_tls:
            raise ConfigurationError(
                "use_tls=True (implicit TLS, port 465) and start_tls=True (port 587) exclude each "
                "other; pass one of them",
                details={"field": "start_tls"},
            )
        if credentials and not use_tls:
            if start_tls is False:
                raise ConfigurationError(
                    "EmailChannel with username/password requires TLS: pass use_tls=True "
                    "(port 465) or leave start_tls unset (STARTTLS required, port 587); "
                    "start_tls=False would send the credentials in clear",
                    details={"field": "start_tls"},
                )
            start_tls = True  # required, never opportunistic
        self.hostname = hostname
        self.port = port
        self.sender = sender
        self.sender_name = sender_name
        self.username = username
        self.password = password
        self.use_tls = use_tls
        self.start_tls = start_tls
        self.tls_context = tls_context
        self.timeout = timeout
        self.name = name

    def build(self, message: OutgoingMessage) -> EmailMessage:
        """The `EmailMessage` for one outgoing message.

        Raises:
            EmailDeliveryError: The recipient has no email address.
        """
        to = message.recipient.email
        if not to:
            raise EmailDeliveryError(
                f"recipient {message.recipient.id!r} has no email address",
                details={"recipient": message.recipient.id},
            )
        mail = EmailMessage()
        mail["From"] = (
            formataddr((self.sender_name, self.sender)) if self.sender_name else self.sender
        )
        mail["To"] = formataddr((message.recipient.name, to)) if message.recipient.name else to
        mail["Subject"] = message.subject
        domain = self.sender.rsplit("@", 1)[1]
        mail["Message-ID"] = make_msgid(idstring=message.delivery_id, domain=domain)
        mail["X-ContractSpec-Delivery"] = message.delivery_id
        mail["X-ContractSpec-Notification"] = message.notification
        mail.set_content(message.body)
        if message.html:
            mail.add_alternative(message.html, subtype="html")
        return mail

    async def send(self, message: OutgoingMessage) -> None:
        """Send over SMTP.

        Raises:
            EmailDeliveryError: No address, or any SMTP error (refused recipient, connection,
                a server that does not offer the required STARTTLS, a certificate that does
                not verify).
        """
        mail = self.build(message)
        try:
            await aiosmtplib.send(
                mail,
                hostname=self.hostname,
                port=self.port,
                username=self.username,
                password=self.password,
                use_tls=self.use_tls,
                start_tls=self.start_tls,
                tls_context=self.tls_context,
                timeout=self.timeout,
            )
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise EmailDeliveryError(
                f"SMTP delivery to {self.hostname} failed: {type(exc).__name__}: {exc}",
                details={"recipient": message.recipient.id},
            ) from exc
