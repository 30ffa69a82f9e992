"""Celery's filesystem broker for the embedded default (`make run`), its messages written
whole before a worker can see them.

kombu's filesystem channel creates a message's file under its final name, then writes
it; the worker takes any file of that name, without the writer's lock. Under a burst
of triggers it took one still empty: "Unrecoverable error: JSONDecodeError" killed the
worker, and with it `make run`, and the message was lost (kombu#1551). Here a message
is written under a name the channel never takes, then renamed to its own, which POSIX
makes atomic: a worker sees no file, or the whole message.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        # The channel takes only "<stamp>_<uuid>.<queue>.msg": a dot file is no queue's.
        partial = os.path.join(self.data_folder_out, f".{name}.part")
        try:
            with open(partial, "wb") as file:
                file.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.remove(partial)
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel
