"""Webhooks: a signed JSON POST per alerted result, with httpx.

The body (UTF-8 JSON, built by :func:`webhook_body`) names the study, the image, the finding, the
model and links to the web page and the API; it carries no patient name, ID or birth date (a
webhook often ends in a chat channel): the Accession Number and Study Instance UID find the
study. Headers:

- ``X-Pneumonode-Signature-256: sha256=<hex>``: HMAC-SHA256 of the raw body with the shared
  secret (``webhook_secret``), as GitHub signs its webhooks. A receiver computes the same over
  the bytes it received and compares in constant time (:func:`verify_signature`).
- ``X-Pneumonode-Delivery``: the alert's ID, the same in every retry (and in the body's ``id``),
  so that a receiver can discard a repeat; ``X-Pneumonode-Event``: ``result`` or
  ``result.corrected``.

An answer 2xx is delivered. No answer within the timeout, no connection, 408, 425, 429 and 5xx
are retried; any other answer (a redirect, which we do not follow with a signature; 4xx: a wrong
URL or secret) is a permanent failure, dead-lettered at once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx

from pneumonode import __version__
from pneumonode.addresses import redact_url
from pneumonode.alerts.content import AlertContent
from pneumonode.alerts.outcome import AttemptOutcome

__all__ = [
    "DELIVERY_HEADER",
    "EVENT_HEADER",
    "SIGNATURE_HEADER",
    "post_webhook",
    "sign",
    "verify_signature",
    "webhook_body",
]

SIGNATURE_HEADER = "X-Pneumonode-Signature-256"
DELIVERY_HEADER = "X-Pneumonode-Delivery"
EVENT_HEADER = "X-Pneumonode-Event"
SIGNATURE_PREFIX = "sha256="
#: answers worth another try (the rest of 4xx say the request itself is wrong)
RETRIED_STATUSES = frozenset({408, 425, 429})


def links(base_url: str, study_uid: str, sop_uid: str) -> dict[str, str]:
    """Where a reader goes next: the study's page, the study in the API, the overlay."""
    base = base_url.rstrip("/")
    study, image = quote(study_uid, safe=""), quote(sop_uid, safe="")
    return {
        "page": f"{base}/#/study/{study}",
        "study": f"{base}/api/studies/{study}",
        "overlay": f"{base}/api/instances/{image}/overlay.png",
    }


def event_name(correction: bool) -> str:
    return "result.corrected" if correction else "result"


def webhook_body(
    content: AlertContent,
    *,
    alert_id: str,
    base_url: str,
    at: datetime,
    correction: bool = False,
) -> bytes:
    """The JSON body for ``content`` (UTF-8 bytes, exactly what is signed and sent)."""
    body: dict[str, Any] = {
        "event": event_name(correction),
        "id": alert_id,
        "created_at": at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "correction": correction,
        "label": f"AI result, {content.label}",
        "study": {
            "study_instance_uid": content.study_uid,
            "accession_number": content.accession_number or None,
            "study_datetime": content.study_datetime or None,
        },
        "image": {
            "sop_instance_uid": content.sop_uid,
            "series_instance_uid": content.series_uid or None,
            "modality": content.modality or None,
            "view_position": content.view_position or None,
        },
        "finding": {
            "pneumothorax": content.present,
            "priority": "urgent" if content.present else "routine",
            "side": content.side,
            "area_mm2": content.area_mm2,
            "area_pixels": content.area_pixels,
            "probability": content.probability,
            "operating_point": content.operating_point,
            "max_pixel_probability": content.max_probability,
        },
        "model": {"name": content.model_name, "version": content.model_version},
        "links": links(base_url, content.study_uid, content.sop_uid),
    }
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def sign(secret: str, body: bytes) -> str:
    """The signature header's value: ``sha256=`` + HMAC-SHA256(secret, body) in hex."""
    digest = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
    return SIGNATURE_PREFIX + digest


def verify_signature(secret: str, body: bytes, header: str | None) -> bool:
    """Whether ``header`` is the signature of ``body`` with ``secret`` (what a receiver does)."""
    return header is not None and hmac.compare_digest(sign(secret, body), header.strip())


def post_webhook(
    url: str,
    body: bytes,
    *,
    secret: str,
    alert_id: str,
    correction: bool,
    timeout: float,
) -> AttemptOutcome:
    """POST ``body`` to ``url``, signed; never raises for what the receiver does."""
    shown = redact_url(url)
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        "User-Agent": f"pneumonode/{__version__}",
        SIGNATURE_HEADER: sign(secret, body),
        DELIVERY_HEADER: alert_id,
        EVENT_HEADER: event_name(correction),
    }
    try:
        with httpx.Client(timeout=timeout, follow_redirects=False) as client:
            response = client.post(url, content=body, headers=headers)
    except httpx.TimeoutException:
        return AttemptOutcome.failed(f"no answer from {shown} within {timeout:g} s")
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:  # before TransportError
        return AttemptOutcome.failed(f"{shown}: {type(exc).__name__}", permanent=True)
    except httpx.TransportError as exc:
        return AttemptOutcome.failed(f"cannot reach {shown} ({type(exc).__name__})")
    code = response.status_code
    if 200 <= code < 300:
        return AttemptOutcome.sent(str(code))
    detail = f"HTTP {code}: {response.text[:200]}" if response.text else f"HTTP {code}"
    retried = code >= 500 or code in RETRIED_STATUSES
    return AttemptOutcome.failed(
        f"{shown} answered HTTP {code}"
        + ("" if retried else " (not retried: fix the URL, the secret or the receiver)"),
        status=str(code),
        detail=detail,
        permanent=not retried,
    )
