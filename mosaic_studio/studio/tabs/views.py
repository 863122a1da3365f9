"""Handler results with named fields: a handler returns a NamedTuple (a "view"), and the event's
`outputs=` list is built from the same class, so a value and its component are matched by
name where they are produced, and the field order is the one place that fixes the outputs'
order (the API endpoints' order too)."""

from __future__ import annotations

import logging
import re
from typing import NamedTuple

import gradio as gr

logger = logging.getLogger(__name__)

# An absolute POSIX path of two or more parts (not the "1/2" of a ratio): the server's folders
# (gradio's upload cache, the store's) are not the user's business, the file name is enough.
_SERVER_PATH = re.compile(r"(?<![\w./~-])/(?:[^\s/'\"]+/)+([^\s/'\"]+)")


def components(view: type[NamedTuple], ui, **others) -> list:
    """The outputs list for handlers returning `view`: per field, the component of that name in
    `others` (components outside the tab, such as a shared gr.State) or else on `ui`."""
    return [others[name] if name in others else getattr(ui, name) for name in view._fields]


def public_message(message: str) -> str:
    """`message` with every absolute path shortened to its file name."""
    return _SERVER_PATH.sub(r"\1", message)


def user_error(error: Exception) -> gr.Error:
    """The gr.Error a user sees for `error` (its message, with no server path in it), logged as
    one line: the input is wrong, not the app, so no traceback is printed (gradio prints one
    otherwise, chained to the cause)."""
    message = public_message(str(error))
    logger.warning("refused: %s", message.replace("\n", " "))
    return gr.Error(message, print_exception=False)


def skipped(view: type[NamedTuple]):
    """A `view` that leaves every output as it is."""
    return view(*(gr.skip() for _ in view._fields))
