"""Associations the node opens only to send (the outbox, C-MOVE sub-associations).

pynetdicom 3.0.4's association reactor looks for incoming DIMSE requests without blocking. It can pass its
pause check just before `send_c_store` pauses it, then take the C-STORE response off the queue as an
"unexpected C-STORE service message"; the sender then waits out the DIMSE timeout and aborts (FACTS; the
closer the response follows the request, the likelier: with TCP_NODELAY the test suite hit it). On an
association that only sends, every DIMSE message that arrives answers a request the sending call is
waiting for, so the reactor is left none: only blocking reads (the sender's) take messages.
"""

from __future__ import annotations

from typing import Any


def leave_responses_to_the_sender(assoc: Any) -> None:
    """Let only the blocking reads of the sending calls take DIMSE messages on `assoc`."""
    get_msg = assoc.dimse.get_msg
    assoc.dimse.get_msg = lambda block=False: get_msg(block) if block else (None, None)
