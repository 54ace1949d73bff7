"""Log records without secrets in them."""

from __future__ import annotations

import logging
import re

# One-time codes and tokens in a query string (the preview handshake, signed links).
_SECRET_QUERY = re.compile(r"(?i)([?&](?:code|token|[a-z_]*auth_key)=)[^&\s\"]*")


class RedactSecrets(logging.Filter):
    """Blanks secret query parameters in log records, such as uvicorn's access log lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_SECRET_QUERY.sub(r"\1[redacted]", a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.msg, str):
            record.msg = _SECRET_QUERY.sub(r"\1[redacted]", record.msg)
        return True
