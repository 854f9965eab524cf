"""Checks (operators and developers): info, echo."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from pneumonode import __version__
from pneumonode.cli.common import EXIT_OK, CliError, CommandGroup, destination

if TYPE_CHECKING:
    from pneumonode.config import Settings

__all__ = ["add_commands"]


def add_commands(group: CommandGroup) -> None:
    info = group.add(
        "info", _cmd_info, help="show the configuration and the installed pixel decoders"
    )
    info.add_argument("--format", choices=("table", "json"), default="table")

    echo = group.add("echo", _cmd_echo, help="C-ECHO a DICOM peer")
    echo.add_argument("destination", metavar="AE@host:port")
    echo.add_argument("--timeout", type=float, default=30.0)
    echo.add_argument(
        "--tls",
        action="store_true",
        help="over DICOM TLS (PNEUMONODE_TLS_* certificates; implied for tls_destinations)",
    )


def _served_model(settings: Settings) -> dict[str, Any]:
    """The model the node would serve and the engine it would run on, from the checkpoint's
    config.json and this host (the weights are not loaded); ``error`` where either fails."""
    from pneumonode.model.checkpoint import CheckpointError, read_checkpoint_config
    from pneumonode.model.predictor import BackendUnavailableError, choose_backend

    served: dict[str, Any] = {
        "path": str(settings.model),
        "configured_by": "PNEUMONODE_MODEL_PATH" if settings.model_path else "shipped model",
    }
    try:
        config = read_checkpoint_config(settings.model)
    except CheckpointError as exc:
        return {**served, "error": str(exc)}
    operating_point = settings.operating_point
    if operating_point is None and config.decision is not None:
        operating_point = config.decision.threshold
    served |= {
        "name": config.name,
        "version": config.version,
        "input_size": config.input.size,
        "encoder": config.architecture.encoder,
        "calibrated": config.calibration is not None,
        "operating_point": operating_point,
        "operating_point_from": (
            "PNEUMONODE_OPERATING_POINT" if settings.operating_point is not None else "model"
        ),
        "backend_setting": settings.inference_backend,
        "device_setting": settings.device,
        "precision_setting": settings.inference_precision,
    }
    try:
        backend = choose_backend(
            settings.inference_backend, settings.device, settings.inference_precision
        )
    except BackendUnavailableError as exc:
        return {**served, "error": str(exc)}
    return served | {"backend": backend, "device": settings.device if backend == "torch" else "cpu"}


def _model_lines(served: dict[str, Any]) -> list[str]:
    """``info``'s table of the served model, one ``name value`` row each."""
    rows = [("path", f"{served['path']} ({served['configured_by']})")]
    if "name" in served:
        if not served["calibrated"]:
            probability = "none calibrated (the mask decides)"
        elif served["operating_point"] is None:
            probability = "calibrated"
        else:
            probability = (
                f"calibrated, positive from {served['operating_point']:g} "
                f"({served['operating_point_from']})"
            )
        rows += [
            ("name", served["name"]),
            ("version", served["version"]),
            ("input size", f"{served['input_size']} px (its config.json)"),
            ("encoder", served["encoder"]),
            ("probability", probability),
        ]
    if "backend" in served:
        device = "cuda when present, else cpu" if served["device"] == "auto" else served["device"]
        rows.append(
            (
                "engine",
                f"{served['backend']} on {device}, precision {served['precision_setting']} "
                f"(PNEUMONODE_INFERENCE_BACKEND={served['backend_setting']})",
            )
        )
    if "error" in served:
        rows.append(("error", served["error"]))
    return [f"  {name:20} {value}" for name, value in rows]


def _cmd_info(settings: Settings, args: argparse.Namespace) -> int:
    from pneumonode.conversion import decoder_table

    decoders = decoder_table()
    served = _served_model(settings)
    if args.format == "json":
        payload = {
            "version": __version__,
            "model": served,
            "settings": json.loads(settings.model_dump_json()),
            "decoders": [{"name": n, "uid": u, "plugins": p} for n, u, p in decoders],
        }
        print(json.dumps(payload, indent=2))
        return EXIT_OK
    print(f"pneumonode {__version__}")
    print("model served:")
    for line in _model_lines(served):
        print(line)
    print("settings:")
    for key, value in settings.model_dump().items():
        # the model reads images at its own size (above); this one is convert's
        note = " (convert, convert-siim)" if key == "image_size" else ""
        print(f"  {key:20} {value}{note}")
    print("pixel data decoders (in order of preference):")
    for name, uid, plugins in decoders:
        print(f"  {name[:56]:56} {uid:24} {plugins}")
    return EXIT_OK


def _cmd_echo(settings: Settings, args: argparse.Namespace) -> int:
    from pneumonode.dicom_node.scu import echo
    from pneumonode.dicom_node.tls import TlsConfigError, TlsSettings

    peer = destination(args.destination)
    tls = None
    if args.tls or str(peer) in settings.tls_destinations:
        try:
            tls = TlsSettings.from_settings(settings).client_context()
        except TlsConfigError as exc:
            raise CliError(str(exc)) from None
    result = echo(peer, settings.ae_title, args.timeout, tls)
    if not result.ok:
        raise CliError(result.reason)
    print(result.reason)
    return EXIT_OK
