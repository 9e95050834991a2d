"""Storage URLs from the command line or a study file: shown only without their secrets, and
never allowed to create folders the user did not ask for.

Parsing is SQLAlchemy's own (`make_url`), the parser that will open the URL: a password holding
`#`, `/`, `?` or `@`-escapes is found exactly where the database driver finds it, and
`render_as_string(hide_password=True)` prints it as `***`. Query parameters that carry secrets
(`?password=`, `sslpassword`, tokens) are hidden too; a URL SQLAlchemy cannot parse is shown as its
scheme only.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote, unquote

from sqlalchemy.engine import make_url

_SECRET_WORDS = ("pass", "pwd", "secret", "token", "credential")


def _secret_key(key: str) -> bool:
    return any(w in key.lower() for w in _SECRET_WORDS)


def redact(url: str) -> str:
    """`url` with its password and secret query values replaced by ***, safe for logs and files."""
    try:
        u = make_url(url)
    except Exception:  # not a URL SQLAlchemy can read: show nothing that might be a secret
        scheme = str(url).split(":", 1)[0] if ":" in str(url) else "storage"
        return f"{scheme}://*** (unparseable URL)"
    query = {k: ("***" if _secret_key(k) else v) for k, v in u.query.items()}
    return u.set(query=query).render_as_string(hide_password=True).replace("%2A%2A%2A", "***")


def secrets_of(url: str) -> list[str]:
    """The secret strings of `url` (password, secret query values) in every spelling a message
    may quote them: as given, percent-decoded and percent-encoded."""
    try:
        u = make_url(url)
    except Exception:
        return [url]
    found = [u.password] if u.password else []
    for k, v in u.query.items():
        if _secret_key(k):
            found += [v] if isinstance(v, str) else list(v)
    spelled = {s for raw in found if raw for s in (raw, unquote(raw), quote(raw, safe=""))}
    return sorted((s for s in spelled if len(s) >= 1), key=len, reverse=True)


def scrub(text: str, url: str) -> str:
    """`text` (an error message, a log line) with `url` and each of its secrets replaced."""
    text = str(text).replace(url, redact(url))
    for secret in secrets_of(url):
        if len(secret) >= 3:  # a one- or two-character password would blank unrelated words
            text = text.replace(secret, "***")
    return text


def sqlite_path(url: str) -> Path | None:
    """The database file of a sqlite URL (None for other databases or in-memory SQLite)."""
    try:
        u = make_url(url)
    except Exception:
        return None
    if not u.drivername.startswith("sqlite") or not u.database or u.database == ":memory:":
        return None
    return Path(u.database)


def check_sqlite_folder(url: str) -> None:
    """A SQLite database may be created, but not the folders above it: a typo in --storage must
    not leave a directory tree behind. Raises FileNotFoundError naming the missing folder."""
    path = sqlite_path(url)
    if path is not None and not path.parent.is_dir():
        raise FileNotFoundError(f"folder {path.parent} of the SQLite storage {redact(url)} does not "
                                "exist; create it first or choose another --storage")
