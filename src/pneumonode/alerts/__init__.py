"""Alerts about results: HL7 v2 ORU^R01 over MLLP to a RIS, and signed webhooks.

- ``content``: what an alert says (:class:`~pneumonode.alerts.content.AlertContent`), made from
  the received image and the finding; the rule of which results are alerted.
- ``hl7``: the ORU^R01 (hl7apy builds and checks it), MLLP and the ACK (python-hl7).
- ``webhook``: the JSON body, its HMAC-SHA256 signature, the POST (httpx).
- ``outbox``: alert rows queued with their result, sent, retried and dead-lettered as deliveries
  are (their rows written by ``db.outbox``); the loop that retries them.

Where alerts go (``host:port``, webhook URLs) is parsed by ``pneumonode.addresses``, with which
the settings check them. Nothing is imported here.
"""

__all__: list[str] = []
