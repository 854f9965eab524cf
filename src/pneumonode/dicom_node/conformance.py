"""The DICOM Conformance Statement's tables, generated from the code's own tables so that they
cannot drift.

``docs/conformance.md`` follows PS3.2 Annex A: prose written by people around tables written by
this module. Each table sits between two markers::

    <!-- generated: statuses -->
    | status | meaning | Error Comment |
    ...
    <!-- /generated -->

and :func:`refresh` rewrites what is between them. The tables and where they come from:

``identity``             our version, Implementation Class UID and Version Name, PDU lengths,
                         presentation contexts per association (``upper``, ``identity``,
                         ``requestor``, ``scu``, the ``Settings`` defaults)
``services``             the overview: what we provide and use (the two tables below)
``scp-sop-classes``      the listener's abstract syntaxes (``scp.supported_contexts``), and for
                         each whether ``selection.skip_reason`` analyses a frontal chest image
``transfer-syntaxes``    the transfer syntaxes of the same table; which ones conversion decodes
``rejections``           every A-ASSOCIATE-RJ the listener can send: the ``RejectionError(...)``
                         calls and ``REJECT_*`` constants of ``dicom_node``, named as PS3.8 names
                         them
``statuses``             every DIMSE status the listener answers with: the ``Status(...)`` and
                         ``Answer(...)`` calls of ``dicom_node`` with their Error Comments, named
                         as PS3.4 and PS3.7 name them
``results``              the objects we create and send: ``RESULT_OBJECTS`` (held to
                         ``results.result_kind`` and to built objects), ``results.common``'s
                         series numbers and descriptions
``codes``                the coded concepts the modules of ``results`` name
``received-attributes``  what the listener reads of a received dataset (``receive``)
``settings``             the settings of the DICOM node with their defaults and descriptions:
                         the fields of ``Settings`` from ``ae_title`` up to the worker's
``character-sets``       the Specific Character Set terms pydicom decodes and highdicom accepts

Nothing heavy is imported before a table is made. ``python -m pneumonode.dicom_node.conformance
[FILE]`` rewrites the document; ``tests/dicom_node/test_conformance.py`` holds the committed one
to what this module makes.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pneumonode.dicom_node.dimse import Status

if TYPE_CHECKING:
    from pneumonode.results.common import ResultKind
__all__ = [
    "BLOCKS",
    "DOCUMENT",
    "RESULT_OBJECTS",
    "ConformanceError",
    "RejectionUse",
    "ResultObject",
    "StatusUse",
    "main",
    "refresh",
    "rejections",
    "statuses",
]

#: The Conformance Statement in a source checkout.
DOCUMENT = Path(__file__).resolve().parents[3] / "docs" / "conformance.md"
_BLOCK = re.compile(r"(<!-- generated: ([a-z-]+) -->\n)(.*?)(<!-- /generated -->)", re.S)
_PACKAGE = "pneumonode.dicom_node"


class ConformanceError(ValueError):
    """A document without a table's markers, or code this module cannot describe."""


# --- names the standard gives to numbers --------------------------------------------------

#: DIMSE statuses (PS3.4 B.2.3 for Storage, PS3.7 Annex C for the general ones).
STATUS_NAMES: dict[int, str] = {
    Status.SUCCESS: "Success",
    Status.PROCESSING_FAILURE: "Failure: Processing failure",
    Status.INVALID_SOP_INSTANCE: "Failure: Invalid SOP Instance",
    Status.SOP_CLASS_NOT_SUPPORTED: "Failure: SOP Class not supported",
    Status.NOT_AUTHORIZED: "Failure: Not authorized",
    Status.UNRECOGNISED_OPERATION: "Failure: Unrecognized operation",
    Status.MISTYPED_ARGUMENT: "Failure: Mistyped argument",
    Status.RESOURCE_LIMITATION: "Failure: Resource limitation",
    Status.OUT_OF_RESOURCES: "Refused: Out of Resources",
    Status.DATASET_DOES_NOT_MATCH_SOP_CLASS: "Error: Data Set does not match SOP Class",
    Status.COERCION_OF_DATA_ELEMENTS: "Warning: Coercion of Data Elements",
    Status.ELEMENTS_DISCARDED: "Warning: Elements Discarded",
    Status.DATASET_DOES_NOT_MATCH_SOP_CLASS_WARNING: "Warning: Data Set does not match SOP Class",
    Status.CANNOT_UNDERSTAND: "Error: Cannot understand",
    Status.CANCEL: "Cancel",
}
#: A-ASSOCIATE-RJ result, source and reason/diagnostic (PS3.8 Table 9-21).
REJECT_RESULTS = {1: "rejected-permanent", 2: "rejected-transient"}
REJECT_SOURCES = {
    1: "DICOM UL service-user",
    2: "DICOM UL service-provider (ACSE related function)",
    3: "DICOM UL service-provider (Presentation related function)",
}
REJECT_REASONS = {
    1: {
        1: "no-reason-given",
        2: "application-context-name-not-supported",
        3: "calling-AE-title-not-recognized",
        7: "called-AE-title-not-recognized",
    },
    2: {1: "no-reason-given", 2: "protocol-version-not-supported"},
    3: {1: "temporary-congestion", 2: "local-limit-exceeded"},
}


# --- reading the code ---------------------------------------------------------------------


def _modules() -> Iterator[tuple[Any, ast.Module]]:
    """(module, its syntax tree) of each module of ``dicom_node`` but this one."""
    package = importlib.import_module(_PACKAGE)
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if info.name == __name__.rpartition(".")[2]:
            continue
        module = importlib.import_module(f"{_PACKAGE}.{info.name}")
        source = Path(module.__file__ or "").read_text(encoding="utf-8")
        yield module, ast.parse(source)


def _value(node: ast.expr, module: Any) -> Any:
    """What a constant, a module-level name or a dotted name of ``module`` is, or None."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return getattr(module, node.id, None)
    if isinstance(node, ast.Attribute):
        owner = _value(node.value, module)
        return None if owner is None else getattr(owner, node.attr, None)
    return None


def _text(node: ast.expr | None) -> str | None:
    """A string argument as written: a literal, or an f-string with ``{name}`` placeholders."""
    if node is None:
        return ""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        parts = []
        for part in node.values:
            if isinstance(part, ast.Constant):
                parts.append(str(part.value))
            elif isinstance(part, ast.FormattedValue):
                parts.append("{" + ast.unparse(part.value) + "}")
        return "".join(parts)
    return None  # a value made elsewhere


def _calls(tree: ast.Module, names: Iterable[str]) -> Iterator[ast.Call]:
    wanted = set(names)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            if name in wanted:
                yield node


def _argument(call: ast.Call, position: int, *keywords: str) -> ast.expr | None:
    if len(call.args) > position and not isinstance(call.args[position], ast.Starred):
        return call.args[position]
    return next((k.value for k in call.keywords if k.arg in keywords), None)


@dataclass(frozen=True, order=True)
class StatusUse:
    """A DIMSE status the listener answers with, and the Error Comment it sends with it."""

    code: int
    comment: str

    @property
    def meaning(self) -> str:
        return STATUS_NAMES[self.code]


#: The classes whose construction is a response status (the first argument the status, the
#: second the Error Comment).
_STATUS_CLASSES = ("Status", "Answer")


def statuses() -> list[StatusUse]:
    """Every status ``dicom_node`` constructs a response with (a status passed on from another
    response is counted where it was made)."""
    found: set[StatusUse] = set()
    for module, tree in _modules():
        for call in _calls(tree, _STATUS_CLASSES):
            code = _value(_argument(call, 0, "code", "status") or ast.Constant(None), module)
            if not isinstance(code, int):
                continue  # e.g. Answer(status.code, ...): made elsewhere
            comment = _text(_argument(call, 1, "comment"))
            if code not in STATUS_NAMES:
                raise ConformanceError(
                    f"{module.__name__} answers with status {code:#06x}, which STATUS_NAMES does "
                    "not name: add its name from PS3.4/PS3.7"
                )
            found.add(StatusUse(code, comment if comment is not None else "(varies)"))
    if not any(use.code == Status.SUCCESS for use in found):
        raise ConformanceError(
            f"no {'(...) or '.join(_STATUS_CLASSES)}(...) with status 0x0000 found in "
            f"{_PACKAGE}: has the response class been renamed? (see _STATUS_CLASSES)"
        )
    return sorted(found)


@dataclass(frozen=True, order=True)
class RejectionUse:
    """An A-ASSOCIATE-RJ the listener sends: (result, source, reason/diag.), and where."""

    codes: tuple[int, int, int]
    where: str


def rejections() -> list[RejectionUse]:
    """Every A-ASSOCIATE-RJ (result, source, reason) of ``dicom_node``: ``RejectionError``
    calls with constant codes (``where``: their reason) and module-level ``REJECT_*`` tuples
    (``where``: their name)."""
    found: set[RejectionUse] = set()
    for module, tree in _modules():
        for call in _calls(tree, ("RejectionError",)):
            values = [_value(arg, module) for arg in call.args[1:4]]
            if len(values) == 3 and all(isinstance(c, int) for c in values):
                reason = _text(call.args[0])
                if reason is None:  # made elsewhere: name what holds it
                    reason = f"`{ast.unparse(call.args[0])}`"
                found.add(RejectionUse((values[0], values[1], values[2]), reason))
        for node in tree.body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target = node.targets[0]
                if isinstance(target, ast.Name) and target.id.startswith("REJECT_"):
                    codes = getattr(module, target.id, None)
                    if (
                        isinstance(codes, tuple)
                        and len(codes) == 3
                        and all(isinstance(c, int) for c in codes)
                    ):
                        found.add(RejectionUse(codes, f"`{target.id}`"))
    if not found:
        raise ConformanceError(f"no association rejection found in {_PACKAGE}")
    for rejection in found:
        result, source, diagnostic = rejection.codes
        if result not in REJECT_RESULTS or diagnostic not in REJECT_REASONS.get(source, {}):
            raise ConformanceError(
                f"A-ASSOCIATE-RJ {rejection.codes} ({rejection.where}) is not named in "
                "REJECT_RESULTS/REJECT_REASONS: add its PS3.8 names"
            )
    return sorted(found, key=lambda r: (r.codes[1], r.codes[2], r.codes[0], r.where))


# --- what the tables hold ----------------------------------------------------------------


@dataclass(frozen=True)
class ResultObject:
    """An object the worker creates and sends: ``kind`` as ``results.common`` names it."""

    kind: ResultKind
    sop_class_uid: str
    modality: str
    transfer_syntax_uid: str
    made_by: str


#: What ``results`` builds: each SOP class as ``results.result_kind`` names it (checked when the
#: table is made), Modality and transfer syntax as the built objects have them (held to them by
#: tests/dicom_node/test_conformance.py).
RESULT_OBJECTS = (
    ResultObject(
        "SEG", "1.2.840.10008.5.1.4.1.1.66.4", "SEG", "1.2.840.10008.1.2.1", "results/seg.py"
    ),
    ResultObject(
        "SR", "1.2.840.10008.5.1.4.1.1.88.33", "SR", "1.2.840.10008.1.2.1", "results/sr.py"
    ),
    ResultObject("SC", "1.2.840.10008.5.1.4.1.1.7", "OT", "1.2.840.10008.1.2", "results/sc.py"),
)


def _uid_name(uid: str) -> str:
    """The UID's name in pydicom's dictionary, else pynetdicom's keyword as words."""
    from pydicom.uid import UID

    name = UID(uid).name
    if name != uid:
        return str(name)
    from pynetdicom import sop_class

    keyword = next((k for k, v in vars(sop_class).items() if v == uid and k[0].isupper()), "")
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", keyword) or uid


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _analysed(sop_class_uid: str) -> str:
    """Whether a frontal chest image of this SOP class becomes a job (``skip_reason`` with the
    default rules), and for which modalities when that depends on them."""
    from pneumonode.dicom_node.selection import skip_reason
    from pneumonode.selection_rules import SelectionRules

    modalities = ("CR", "DX", "OT")
    analysed = [
        modality
        for modality in modalities
        if skip_reason(
            {
                "Modality": modality,
                "BodyPartExamined": "CHEST",
                "ViewPosition": "PA",
                "PhotometricInterpretation": "MONOCHROME2",
                "SamplesPerPixel": 1,
            },
            sop_class_uid,
            has_pixel_data=True,
            rules=SelectionRules(),
        )
        is None
    ]
    if len(analysed) == len(modalities):
        return "yes"
    return f"Modality {' or '.join(analysed)}" if analysed else ""


def _supported() -> dict[str, frozenset[str]]:
    from pneumonode.dicom_node.scp import supported_contexts

    return supported_contexts()


def _verification() -> str:
    from pneumonode.dicom_node.dimse import VERIFICATION

    return str(VERIFICATION)


def scp_sop_classes_table() -> str:
    supported = _supported()
    verification = _verification()
    order = [verification, *(uid for uid in supported if uid != verification)]
    rows = [
        (_uid_name(uid), f"`{uid}`", "C-ECHO" if uid == verification else "C-STORE", _analysed(uid))
        for uid in order
    ]
    return _table(("SOP class", "UID", "service", "analysed (frontal chest image)"), rows)


def transfer_syntaxes_table() -> str:
    from pneumonode.conversion.decode import DECODER_PREFERENCE, NATIVE_SYNTAXES
    from pneumonode.dicom_node.contexts import ACCEPTED_TRANSFER_SYNTAXES

    supported = _supported()
    verification = supported[_verification()]
    storage_sets = {s for abstract, s in supported.items() if abstract != _verification()}
    if len(storage_sets) != 1:
        raise ConformanceError("the storage SOP classes differ in their transfer syntaxes")
    (for_storage,) = storage_sets
    decoded = {str(uid) for uid in (*NATIVE_SYNTAXES, *DECODER_PREFERENCE)}
    listed = [str(uid) for uid in ACCEPTED_TRANSFER_SYNTAXES]
    order = listed + sorted((verification | for_storage) - set(listed))
    rows = [
        (
            _uid_name(uid),
            f"`{uid}`",
            _yes(uid in verification),
            _yes(uid in for_storage),
            _yes(uid in decoded) if uid in for_storage else "",
        )
        for uid in order
    ]
    header = ("transfer syntax", "UID", "Verification", "Storage", "pixel data decoded")
    return _table(header, rows)


def services_table() -> str:
    supported = _supported()
    storage = len(supported) - 1
    rows = [("Verification", "yes", "yes")]
    by_uid = {obj.sop_class_uid: obj.kind for obj in RESULT_OBJECTS}
    for obj in RESULT_OBJECTS:
        rows.append((_uid_name(obj.sop_class_uid), f"yes ({obj.kind}, our results)", "yes"))
    rows.append(
        (
            f"the other {storage - len(by_uid)} Storage SOP classes of the listener's table "
            "([3.2.1.1](#3211-sop-classes))",
            "only `pneumonode send`",
            "yes",
        )
    )
    return _table(("SOP classes (Transfer)", "user (SCU)", "provider (SCP)"), rows)


def identity_table() -> str:
    from pneumonode import __version__
    from pneumonode.config import Settings
    from pneumonode.dicom_node.requestor import OUR_MAX_PDU
    from pneumonode.dicom_node.scu import MAX_CONTEXTS
    from pneumonode.dicom_node.upper import (
        APPLICATION_CONTEXT,
        IMPLEMENTATION_CLASS_UID,
        MAX_ASSOCIATE_RQ_LENGTH,
    )
    from pneumonode.identity import IMPLEMENTATION_VERSION_NAME, MANUFACTURER

    defaults = Settings.model_construct()
    rows = [
        ("product and version", f"pneumonode {__version__}"),
        ("Manufacturer (0008,0070) of the objects we create", f"`{MANUFACTURER}`"),
        ("Implementation Class UID", f"`{IMPLEMENTATION_CLASS_UID}`"),
        ("Implementation Version Name", f"`{IMPLEMENTATION_VERSION_NAME}`"),
        ("Application Context Name", f"`{APPLICATION_CONTEXT}`"),
        (
            "AE title (default; the called AE as SCP, the calling AE as SCU)",
            f"`{defaults.ae_title}`",
        ),
        ("maximum PDU length we receive, as acceptor (default)", f"{defaults.max_pdu} bytes"),
        ("maximum PDU length we receive, as requestor", f"{OUR_MAX_PDU} bytes"),
        ("longest A-ASSOCIATE-RQ we accept", f"{MAX_ASSOCIATE_RQ_LENGTH} bytes"),
        ("presentation contexts we propose per association, at most", str(MAX_CONTEXTS)),
    ]
    return _table(("", "value"), rows)


def rejections_table() -> str:
    rows = [
        (
            f"{r.codes[0]} {REJECT_RESULTS[r.codes[0]]}",
            f"{r.codes[1]} {REJECT_SOURCES[r.codes[1]]}",
            f"{r.codes[2]} {REJECT_REASONS[r.codes[1]][r.codes[2]]}",
            r.where,
        )
        for r in rejections()
    ]
    return _table(("result", "source", "reason/diag.", "in the code"), rows)


def statuses_table() -> str:
    rows = [
        (f"`0x{use.code:04X}`", use.meaning, f"`{use.comment}`" if use.comment else "")
        for use in statuses()
    ]
    return _table(("status", "meaning", "Error Comment (0000,0902), 64 characters at most"), rows)


def results_table() -> str:
    from pneumonode.config import Settings
    from pneumonode.results.common import SERIES_NUMBERS, result_kind, series_description

    label = Settings.model_construct().result_label
    rows = []
    for obj in RESULT_OBJECTS:
        if result_kind(obj.sop_class_uid) != obj.kind:
            raise ConformanceError(
                f"results calls {obj.sop_class_uid} {result_kind(obj.sop_class_uid)}, "
                f"RESULT_OBJECTS calls it {obj.kind}: make them agree"
            )
        rows.append(
            (
                obj.kind,
                f"{_uid_name(obj.sop_class_uid)} (`{obj.sop_class_uid}`)",
                obj.modality,
                SERIES_NUMBERS[obj.kind],
                series_description(obj.kind, label),
                _uid_name(obj.transfer_syntax_uid),
                f"`{obj.made_by}`",
            )
        )
    missing = set(SERIES_NUMBERS) - {obj.kind for obj in RESULT_OBJECTS}
    if missing:
        raise ConformanceError(f"results makes {sorted(missing)} too: add to RESULT_OBJECTS")
    header = (
        "kind",
        "SOP class",
        "Modality",
        "Series Number",
        "Series Description (default label)",
        "transfer syntax",
        "made by",
    )
    return _table(header, rows)


#: The modules that make our result objects, whose coded concepts the statement lists.
_RESULT_MODULES = ("seg", "sr", "sc")


def _coded_concepts(tree: ast.Module) -> Iterator[tuple[str, str, str]]:
    """(scheme, value, meaning) of each code a results module names: ``codes.<SCHEME>.<Name>``
    (pydicom's dictionary) and ``CodedConcept(value, scheme, meaning)`` with literal arguments."""
    from pydicom.sr.codedict import codes

    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Attribute)
            and isinstance(node.value.value, ast.Name)
            and node.value.value.id == "codes"
        ):
            code = getattr(getattr(codes, node.value.attr), node.attr)
            yield code.scheme_designator, code.value, code.meaning
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "CodedConcept":
            values = [_value(arg, None) for arg in node.args[:3]]
            if len(values) == 3 and all(isinstance(v, str) for v in values):
                yield values[1], values[0], values[2]


def codes_table() -> str:
    folder = Path(__file__).resolve().parents[1] / "results"
    used: dict[tuple[str, str, str], list[str]] = {}
    for name in _RESULT_MODULES:
        tree = ast.parse((folder / f"{name}.py").read_text(encoding="utf-8"))
        for concept in _coded_concepts(tree):
            modules = used.setdefault(concept, [])
            if name not in modules:
                modules.append(name)
    rows = [
        (scheme, f"`{value}`", meaning, ", ".join(f"`results/{m}.py`" for m in modules))
        for (scheme, value, meaning), modules in sorted(used.items())
    ]
    return _table(("scheme", "code value", "code meaning", "named in"), rows)


def received_attributes_table() -> str:
    from pydicom.datadict import tag_for_keyword

    from pneumonode.dicom_node.receive import HEADER_KEYWORDS
    from pneumonode.dicom_node.selection import SELECTION_KEYWORDS

    rows = []
    for keyword in dict.fromkeys(HEADER_KEYWORDS):
        tag = tag_for_keyword(keyword)
        if tag is None:
            raise ConformanceError(f"{keyword} is not a DICOM keyword")
        use = "selection" if keyword in SELECTION_KEYWORDS else "checks and records"
        rows.append((keyword, f"({tag >> 16:04X},{tag & 0xFFFF:04X})", use))
    return _table(("attribute", "tag", "used for"), rows)


#: The settings of the DICOM node: the fields of ``Settings`` from the first up to (not
#: including) the last named here, less those that are not about DICOM.
_SETTINGS_FROM, _SETTINGS_UNTIL = "ae_title", "model_path"
_NOT_DICOM_SETTINGS = frozenset(
    {
        "retention_days",
        # alerts: HL7 v2 and webhooks (docs/operations.md#alerts)
        "notify",
        "hl7_destinations",
        "hl7_sending_application",
        "hl7_sending_facility",
        "webhook_urls",
        "webhook_secret",
        "alert_timeout",
        "public_url",
    }
)


def _default(value: object) -> str:
    if value is None or value == []:
        return "none"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float) and value.is_integer():
        return f"`{int(value)}`"
    if isinstance(value, tuple):  # as the environment writes it
        return f"`{','.join(str(item) for item in value)}`"
    return f"`{value}`"


def settings_table() -> str:
    from pneumonode.config import ENV_PREFIX, Settings

    names = list(Settings.model_fields)
    try:
        chosen = names[names.index(_SETTINGS_FROM) : names.index(_SETTINGS_UNTIL)]
    except ValueError:
        raise ConformanceError(
            f"Settings has no {_SETTINGS_FROM} or {_SETTINGS_UNTIL}: update _SETTINGS_FROM/UNTIL"
        ) from None
    defaults = Settings.model_construct()
    rows = [
        (
            f"`{ENV_PREFIX}{name.upper()}`",
            _default(getattr(defaults, name)),
            Settings.model_fields[name].description or "",
        )
        for name in chosen
        if name not in _NOT_DICOM_SETTINGS
    ]
    return _table(("setting", "default", "meaning"), rows)


def character_sets_table() -> str:
    import highdicom
    from pydicom.charset import python_encoding

    written = {value.value for value in highdicom.SpecificCharacterSetValues}
    terms = sorted((set(python_encoding) | written) - {""})
    rows = [
        (
            f"`{term}`",
            python_encoding.get(term, ""),
            _yes(term in python_encoding),
            _yes(term in written),
        )
        for term in terms
    ]
    header = ("term", "Python codec", "decoded in what we receive", "accepted in our SEG/SR/SC")
    return _table(header, rows)


#: Table name -> what makes it (the names of the document's markers).
BLOCKS: dict[str, Callable[[], str]] = {
    "identity": identity_table,
    "services": services_table,
    "scp-sop-classes": scp_sop_classes_table,
    "transfer-syntaxes": transfer_syntaxes_table,
    "rejections": rejections_table,
    "statuses": statuses_table,
    "results": results_table,
    "codes": codes_table,
    "received-attributes": received_attributes_table,
    "settings": settings_table,
    "character-sets": character_sets_table,
}


def refresh(document: str) -> str:
    """``document`` with every generated table made anew (the prose left as it is).

    Raises:
        ConformanceError: a table without its markers, or markers naming no table.
    """
    named = [match.group(2) for match in _BLOCK.finditer(document)]
    unknown = sorted(set(named) - set(BLOCKS))
    if unknown:
        raise ConformanceError(f"the document names tables this module does not make: {unknown}")
    missing = [name for name in BLOCKS if name not in named]
    if missing:
        raise ConformanceError(
            f"the document has no markers for {missing}: add '<!-- generated: NAME -->' and "
            "'<!-- /generated -->' where each belongs"
        )
    made: dict[str, str] = {}

    def replace(match: re.Match[str]) -> str:
        name = match.group(2)
        if name not in made:
            made[name] = BLOCKS[name]()
        return match.group(1) + made[name] + match.group(4)

    return _BLOCK.sub(replace, document)


def main(argv: Sequence[str] | None = None) -> int:
    """Rewrite the Conformance Statement (``argv``: another path to it)."""
    args = list(sys.argv[1:] if argv is None else argv)
    path = Path(args[0]) if args else DOCUMENT
    text = path.read_text(encoding="utf-8")
    new = refresh(text)
    if new == text:
        print(f"{path}: up to date")
    else:
        path.write_text(new, encoding="utf-8")
        print(f"{path}: tables rewritten")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
