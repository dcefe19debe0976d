"""PDF documents: Jinja templates under ``templates/pdf/`` rendered by WeasyPrint.

The same template and context always give byte-identical PDFs: the only date in the
file is the document's own (``document_date`` in the context, written as the PDF's
creation and modification date), the file identifier is a hash of the content, and
fonts and resources come from this machine only. Nothing is fetched from a network:
a resource is read only from a ``data:`` URL or a file inside the project, and any
other reference stops the rendering.

WeasyPrint is imported on first use, so the web app does not pay its import at start.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

from flask import current_app, render_template

from portal.config import PROJECT_ROOT


class PdfRenderError(RuntimeError):
    """A document could not be rendered (e.g. it refers to a resource it may not read)."""


def render_pdf(template_name: str, **context: Any) -> bytes:
    """Render the Jinja template ``template_name`` with ``context`` to PDF bytes.

    A ``document_date`` (a date or a datetime; naive means UTC) in the context
    becomes the PDF's creation and modification date; without one the PDF has none.
    Relative URLs in the template resolve from the template's own folder.
    """
    import weasyprint
    from weasyprint.urls import FatalURLFetchingError

    context["pdf_date"] = w3c_date(context.get("document_date"))
    html = render_template(template_name, **context)
    base_url = template_path(template_name).parent.as_uri() + "/"
    try:
        document = weasyprint.HTML(string=html, base_url=base_url,
                                   url_fetcher=_fetcher_class()(fail_on_errors=True))
        return document.write_pdf(pdf_identifier=True)
    except FatalURLFetchingError as exc:
        raise PdfRenderError(f"{template_name}: {exc.__cause__ or exc}") from exc.__cause__


def sha256_hex(data: bytes) -> str:
    """The SHA-256 of ``data`` as 64 hex digits (stored next to a rendered document)."""
    return hashlib.sha256(data).hexdigest()


def template_path(template_name: str) -> Path:
    """Where ``template_name`` lives in the app's template folder."""
    return Path(current_app.root_path, current_app.template_folder or "templates",
                template_name).resolve()


def w3c_date(value: dt.date | None) -> str | None:
    """``value`` as a W3C date-time in UTC to the second (a date stays a date)."""
    if value is None:
        return None
    if not isinstance(value, dt.datetime):
        return value.isoformat()
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def is_local_url(url: str) -> bool:
    """True for a ``data:`` URL or a ``file:`` URL of a file inside the project."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "data":
        return True
    if scheme != "file" or parts.netloc not in ("", "localhost"):
        return False
    return Path(url2pathname(parts.path)).resolve().is_relative_to(PROJECT_ROOT)


@functools.cache
def _fetcher_class() -> type:
    from weasyprint.urls import URLFetcher

    class LocalFetcher(URLFetcher):
        """WeasyPrint's fetcher confined to ``is_local_url``."""

        def fetch(self, url, headers=None):
            if not is_local_url(url):
                raise PdfRenderError(f"refused to fetch {url!r}: not a project file")
            return super().fetch(url, headers)

    return LocalFetcher
