"""A subcommand's words: options (`--name VALUE`, `--name=VALUE`, switches) and operands.

`sbx batch`, `sbx batch --broker` and `sbx worker` take a few long options each; `sbx run`'s
own flags are config/flags.py's, driven by the schema.
"""

from __future__ import annotations

from ..errors import UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Collection

HELP = ("-h", "--help")


def split(args: list[str], valued: Collection[str], switches: Collection[str] = (), *, unknown: str,
          one_operand_last: str | None = None) -> tuple[dict[str, str | bool], list[str]]:
    """(options by name, operands).  `valued` options take the next word or `=VALUE` (long
    ones); `switches` and -h/--help are True when given; any other word starting with "-"
    (but "-" itself, an operand) is refused with `unknown`, where "{arg}" is the word.
    A repeated option keeps its last value.  `one_operand_last`: at most one operand, as the
    last word, else this message."""
    options: dict[str, str | bool] = {}
    operands: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        name, eq, value = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if name in valued:
            if not eq:
                i += 1
                if i >= len(args):
                    raise UsageError(f"{name} needs a value")
                value = args[i]
            options[name] = value
        elif arg in switches or arg in HELP:
            options[arg] = True
        elif arg.startswith("-") and arg != "-":
            raise UsageError(unknown.format(arg=repr(arg)))
        elif one_operand_last is not None and i != len(args) - 1:
            raise UsageError(one_operand_last)
        else:
            operands.append(arg)
        i += 1
    return options, operands
