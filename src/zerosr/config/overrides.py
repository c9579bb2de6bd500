"""The command line as the user meant it, completed before Hydra composes it."""

from __future__ import annotations

from zerosr.errors import UserError


def complete_overrides(args: list[str]) -> list[str]:
    """`data.gt_path=DIR` means the user's own data: `data=paired` is implied, because the default
    `data=demo` would train those folders with the demo's settings (400 iterations, no held-out
    validation). Naming `data=demo` together with a path is a contradiction, so it is refused."""
    given, path_at = {}, None
    for at, arg in enumerate(args):
        if arg.startswith("-") or "=" not in arg:
            continue  # a flag (--config-dir DIR, -m) or a flag's value
        key, value = arg.split("=", 1)
        given[key.lstrip("+~")] = value
        path_at = at if key.lstrip("+~") == "data.gt_path" else path_at
    if given.get("data.gt_path", "null").strip().lower() in ("", "null", "none"):
        return list(args)
    choice = given.get("data")
    if choice is None:  # beside the path: after a trailing flag (`--cfg job`) argparse would refuse it
        return [*args[:path_at + 1], "data=paired", *args[path_at + 1:]]
    if choice.strip() == "demo":
        raise UserError("data=demo is the built-in synthetic dataset and takes no data.gt_path: drop data=demo "
                        "(a data.gt_path implies data=paired, your folders) or drop data.gt_path")
    return list(args)
