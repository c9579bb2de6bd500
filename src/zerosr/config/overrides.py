"""The command line as the user meant it, completed before Hydra composes it."""

from __future__ import annotations

from zerosr.errors import UserError

# Keys whose values are file or folder paths: Hydra's grammar needs quotes around non-ASCII names
# (C:\Users\Jürgen\Bilder), so zerosr adds them where the path would not parse as typed.
PATH_KEYS = ("data.gt_path", "data.lq_path", "data.val_gt_path", "data.val_lq_path", "data.target_path",
             "train.resume", "train.pretrain", "hydra.run.dir", "hydra.sweep.dir")


def quote_paths(args: list[str]) -> list[str]:
    """`data.gt_path=/Bilder/Größe` as Hydra needs it: `data.gt_path='/Bilder/Größe'`."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser, quoted = OverridesParser.create(), []
    for arg in args:
        key, equals, value = arg.partition("=")
        if equals and key.lstrip("+~") in PATH_KEYS and value[:1] not in ("'", '"'):
            try:
                parser.parse_override(arg)
            except Exception:  # any grammar error: quote it, escaping the quotes inside
                arg = f"{key}='{value.replace(chr(39), chr(92) + chr(39))}'"
        quoted.append(arg)
    return quoted


def complete_overrides(args: list[str]) -> list[str]:
    """`data.gt_path=DIR` means the user's own data: `data=paired` is implied, because the default
    `data=demo` would train those folders with the demo's settings (400 iterations, no held-out
    validation). Naming `data=demo` together with a path is a contradiction, so it is refused.
    Paths that Hydra's grammar would refuse as typed (non-ASCII names) are quoted."""
    args = quote_paths(args)
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
