"""Named API tokens (``PNEUMONODE_API_TOKENS=name:token,...``): the parser that the settings
check at start and the API's token lookup share; it imports nothing of pneumonode's."""

from __future__ import annotations

import re

__all__ = ["DEFAULT_TOKEN_NAME", "TOKEN_NAME_PATTERN", "parse_named_tokens"]

#: The name of the single token (``PNEUMONODE_API_TOKEN`` or the generated one).
DEFAULT_TOKEN_NAME = "default"
#: What a token's name may be: it is written into feedback rows and audit messages.
TOKEN_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


def parse_named_tokens(text: str) -> dict[str, str]:
    """``name:token,name:token`` -> {name: token}.

    Raises:
        ValueError: an entry without ``:``, a bad or repeated name, an empty or repeated token;
            the message names the entry by its name, never by its token.
    """
    tokens: dict[str, str] = {}
    for number, entry in enumerate((e.strip() for e in text.split(",")), start=1):
        if not entry:
            continue
        name, sep, token = entry.partition(":")
        name, token = name.strip(), token.strip()
        if not sep:
            raise ValueError(f"entry {number} has no ':'; expected name:token,name:token")
        if not TOKEN_NAME_PATTERN.match(name):
            raise ValueError(
                f"entry {number}: the name must be 1-64 letters, digits, '.', '_', '@' or '-'"
            )
        if not token:
            raise ValueError(f"the token of {name!r} is empty")
        if name in tokens:
            raise ValueError(f"the name {name!r} is given twice")
        if token in tokens.values():
            raise ValueError(f"the token of {name!r} is also another name's token")
        tokens[name] = token
    if not tokens:
        raise ValueError("no name:token entries; unset it, or give name:token,name:token")
    return tokens
