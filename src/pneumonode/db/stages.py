"""The worker's stages: the keys of ``Job.timings``, defined once for the worker that writes
them and the API, metrics and benchmarks that read them.

Each value is the seconds a finished job spent in that stage; the stages do not overlap.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "BUILD",
    "CONVERT",
    "INFER",
    "QUEUED_TO_INFERRED",
    "QUEUE_WAIT",
    "RECEIVE_TO_QUEUED",
    "SEND",
    "STAGES",
    "WRITE",
]

#: From the image's arrival to its job's queueing (the dispatcher's delay).
RECEIVE_TO_QUEUED: Final = "receive_to_queued"
#: From queueing to a worker's claim.
QUEUE_WAIT: Final = "queue_wait"
#: Decoding, windowing and letterboxing the spooled image.
CONVERT: Final = "convert"
#: The network's inference and the finding.
INFER: Final = "infer"
#: Building the SEG, the SR and the Secondary Capture.
BUILD: Final = "build"
#: Writing the result files.
WRITE: Final = "write"
#: Sending the results to the destinations (absent when there are none).
SEND: Final = "send"

#: Every stage, in the order a job passes them.
STAGES: Final = (RECEIVE_TO_QUEUED, QUEUE_WAIT, CONVERT, INFER, BUILD, WRITE, SEND)
#: Queued to inference done: the stages a job spends from the queue to the model's answer.
QUEUED_TO_INFERRED: Final = (QUEUE_WAIT, CONVERT, INFER)
