"""Phone numbers are personal data: masked in logs always, on screens by config."""

from __future__ import annotations


def mask_number(number: str | None) -> str | None:
    """``+8613912345678`` -> ``+86139****5678``; short numbers keep less.

    The first and last digits stay so a supervisor can tell calls apart; the
    middle is hidden.  Non-digits (``+``) are kept in place.
    """
    if not number:
        return number
    digits = [i for i, c in enumerate(number) if c.isdigit()]
    n = len(digits)
    if n <= 4:
        return "*" * len(number)
    keep_tail = 4 if n >= 8 else 2
    keep_head = min(max(n - keep_tail - 4, 1), 5)
    hidden = set(digits[keep_head : n - keep_tail])
    out: list[str] = []
    starred = False
    for i, c in enumerate(number):
        if i in hidden:
            if not starred:
                out.append("****")
                starred = True
        else:
            out.append(c)
    return "".join(out)


def mask_name(name: str | None) -> str | None:
    """``张三丰`` -> ``张**``; ``Customer One`` -> ``C***********``: the first character stays."""
    if not name:
        return name
    return name[0] + "*" * (len(name) - 1)
