"""Plain words for pydantic's validation error types, for the one-line configuration errors
(:func:`pneumonode.config.load_settings`); the rest keep pydantic's own message."""

from __future__ import annotations

__all__ = ["PLAIN_PROBLEMS"]

PLAIN_PROBLEMS = {
    "int_parsing": "must be a whole number",
    "int_type": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "literal_error": "must be {expected}",
    "greater_than_equal": "must be at least {ge}",
    "greater_than": "must be more than {gt}",
    "less_than_equal": "must be at most {le}",
    "less_than": "must be less than {lt}",
    "string_too_long": "must be at most {max_length} characters",
    "string_too_short": "must be at least {min_length} characters",
    "too_short": "needs {min_length} values",
    "too_long": "takes {max_length} values",
    "json_invalid": "not valid JSON",
    "list_type": "must be a list (comma separated)",
    "tuple_type": "must be a list such as [0.5, 99.5]",
    "path_type": "must be a path",
}
