"""Pull notifications from an SQS queue instead of receiving HTTP pushes.

Long-polls `receive_message` and feeds the same batcher as the HTTP receiver. A message is
deleted only after every batch its keys went into was accepted by Prefect; if emitting fails,
the message becomes visible again after the queue's visibility timeout and is retried. A
message we cannot parse is left alone, so the queue's redrive policy moves it to its
dead-letter queue (configure one). Messages with nothing to ingest (test events, deletions)
are deleted at once.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future
from typing import Any

from integrations.events.batcher import Batcher
from integrations.events.notifications import MalformedNotification, parse_text
from integrations.events.receiver import submit

log = logging.getLogger("encord_ingest.events")


class SqsPoller:
    def __init__(
        self,
        client: Any,
        queue_url: str,
        batcher: Batcher,
        *,
        wait_seconds: int = 20,
        max_messages: int = 10,
        visibility_timeout: int | None = None,
    ) -> None:
        self.client = client
        self.queue_url = queue_url
        self.batcher = batcher
        self.wait_seconds = wait_seconds
        self.max_messages = max_messages
        self.visibility_timeout = visibility_timeout
        self.stopping = threading.Event()
        self.deleted = 0
        self.malformed = 0
        self.failed = 0
        self._lock = threading.Lock()

    def poll_once(self) -> int:
        """One long-poll; returns how many messages arrived."""
        kwargs: dict[str, Any] = {
            "QueueUrl": self.queue_url,
            "MaxNumberOfMessages": self.max_messages,
            "WaitTimeSeconds": self.wait_seconds,
        }
        if self.visibility_timeout is not None:
            kwargs["VisibilityTimeout"] = self.visibility_timeout
        messages = self.client.receive_message(**kwargs).get("Messages", [])
        for message in messages:
            self._handle(message)
        return len(messages)

    def _handle(self, message: dict[str, Any]) -> None:
        try:
            parsed = parse_text(message.get("Body") or "")
        except MalformedNotification as exc:
            with self._lock:
                self.malformed += 1
            log.warning("SQS message %s is not a notification (%s); left for the redrive policy", _id(message), exc)
            return
        futures = submit(self.batcher, parsed)
        if not futures:
            self._delete(message)
            return
        remaining = [len(futures)]
        failed = [False]
        lock = threading.Lock()

        def done(future: Future[int]) -> None:
            with lock:
                remaining[0] -= 1
                failed[0] |= future.exception() is not None
                last = remaining[0] == 0
            if not last:
                return
            if failed[0]:
                with self._lock:
                    self.failed += 1
                log.warning("SQS message %s kept: Prefect did not accept its keys", _id(message))
            else:
                self._delete(message)

        for future in futures:
            future.add_done_callback(done)

    def _delete(self, message: dict[str, Any]) -> None:
        try:
            self.client.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])
        except Exception as exc:  # the message comes back; the ledger makes a re-ingest harmless
            log.warning("could not delete SQS message %s: %s", _id(message), exc.__class__.__name__)
            return
        with self._lock:
            self.deleted += 1

    def run(self) -> None:
        """Poll until `stop()`; receive errors back off briefly instead of ending the loop."""
        while not self.stopping.is_set():
            try:
                self.poll_once()
            except Exception as exc:
                log.warning("SQS receive failed: %s", exc.__class__.__name__)
                self.stopping.wait(5)

    def stop(self) -> None:
        self.stopping.set()


def _id(message: dict[str, Any]) -> str:
    return str(message.get("MessageId", "?"))
