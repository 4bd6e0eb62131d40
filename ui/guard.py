"""What a shared server keeps from its visitors: server paths.

`public_message` turns an error into text a visitor may read (the full text goes to
the server log). More work than the server can run is kept out by the compute layer's
bounded queue (`ui.compute`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

log = logging.getLogger("tda.app")

# an absolute POSIX or Windows path, or a home-relative one (at least one separator)
_PATH = re.compile(r"(?:(?<![\w.:/-])(?:~|[A-Za-z]:)?[/\\](?:[\w.@+-]+[/\\])*[\w.@+-]+)")


def public_message(error: BaseException | str, names: Mapping[str, str] | None = None) -> str:
    """`error` with each server path in `names` replaced by its public name (a run's label)
    and any other absolute path replaced by "…"; the original is logged."""
    text = str(error)
    log.warning("shown to a visitor as a scrubbed message: %s", text)
    for path, name in sorted((names or {}).items(), key=lambda kv: -len(kv[0])):
        text = text.replace(path, name)
    return _PATH.sub("…", text)
