"""Email over SMTP, configured by ``MAIL_*`` settings (``BILLFOLD_MAIL_SERVER`` etc.).

``MAIL_SERVER`` and ``MAIL_PORT`` name the server; ``MAIL_USE_SSL`` connects over
TLS from the start (port 465), ``MAIL_USE_TLS`` upgrades with STARTTLS;
``MAIL_USERNAME``/``MAIL_PASSWORD`` log in when set; ``MAIL_FROM`` is the sender.
"""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from flask import current_app


class MailNotConfigured(RuntimeError):
    """No SMTP server is configured."""


def build_message(to: list[str], subject: str, text: str, html: str | None = None,
                  ) -> EmailMessage:
    config = current_app.config
    message = EmailMessage()
    message["From"] = config.get("MAIL_FROM") or "Billfold <billing@localhost>"
    message["To"] = ", ".join(to)
    message["Subject"] = subject
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain="billfold")
    message.set_content(text)
    if html is not None:
        message.add_alternative(html, subtype="html")
    return message


def send_mail(to: list[str], subject: str, text: str, html: str | None = None) -> str:
    """Send one message; returns its Message-ID. Raises MailNotConfigured, or the
    SMTP/OS error, so that the caller records the failure and retries."""
    config = current_app.config
    host = config.get("MAIL_SERVER")
    if not host:
        raise MailNotConfigured("set BILLFOLD_MAIL_SERVER to send email")
    recipients = [address for address in to if address]
    if not recipients:
        raise ValueError("no recipient")
    message = build_message(recipients, subject, text, html)
    port = int(config.get("MAIL_PORT") or (465 if config.get("MAIL_USE_SSL") else 25))
    timeout = float(config.get("MAIL_TIMEOUT") or 10)
    if config.get("MAIL_USE_SSL"):
        smtp: smtplib.SMTP = smtplib.SMTP_SSL(host, port, timeout=timeout,
                                              context=ssl.create_default_context())
    else:
        smtp = smtplib.SMTP(host, port, timeout=timeout)
    with smtp:
        if config.get("MAIL_USE_TLS") and not config.get("MAIL_USE_SSL"):
            smtp.starttls(context=ssl.create_default_context())
        if config.get("MAIL_USERNAME"):
            smtp.login(config["MAIL_USERNAME"], config.get("MAIL_PASSWORD") or "")
        smtp.send_message(message)
    return message["Message-ID"]
