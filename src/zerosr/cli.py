"""How every zerosr command ends on a user's mistake: one line on stderr, exit code 2."""

from __future__ import annotations

import functools
import os
import re
import sys

from zerosr.errors import UserError


def exit_on_user_error(function):
    """Turn a UserError into `error: <message>` and exit 2; HYDRA_FULL_ERROR=1 keeps the traceback.

    In a multirun job the error is raised instead, as a UserError: the sweeper records that job as
    failed (Optuna goes on to the next trial) and the handler below reports it in one line if the
    sweep ends on it. Any other Hydra/OmegaConf error raised while the job runs is a bug, not a
    config mistake: it leaves as a RuntimeError, so the handler does not disguise it as one."""

    from hydra.errors import HydraException
    from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue, OmegaConfBaseException

    def fail(message: str, error: BaseException):
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise error
        if _in_multirun_job():
            raise UserError(message) from None
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)

    @functools.wraps(function)
    def guarded(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except UserError as error:
            fail(str(error), error)
        except (MissingMandatoryValue, InterpolationResolutionError) as error:
            # A value left at ??? or an interpolation that cannot resolve: the config's fault.
            fail(config_error_line(error), error)
        except (HydraException, OmegaConfBaseException) as error:
            raise RuntimeError(f"{type(error).__name__}: {error}") from error

    return guarded


def _in_multirun_job() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


# --------------------------------------------------------------------------- Hydra's config errors

_SPELLING_HINT = "python train.py --cfg job lists every key and value"


def config_error_line(error: BaseException) -> str:
    """One line naming a Hydra/OmegaConf config problem and its fix (Hydra prints several)."""
    import yaml
    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException

    if isinstance(error, yaml.YAMLError):
        return yaml_error_line(error)
    cause = error.__cause__ if isinstance(error.__cause__, OmegaConfBaseException) else error
    if isinstance(cause.__cause__, yaml.YAMLError):  # Hydra wraps some YAML errors
        return yaml_error_line(cause.__cause__)
    key = getattr(cause, "full_key", None)
    first = _first_line(cause)
    composing = _COMPOSING.match(first)
    if composing and key is None:
        # "In 'exp': ConfigKeyError raised while composing config:" then the detail and
        # "full_key: ..." on later lines: a config file's mistake, named with its key and file.
        where, kind = composing.groups()
        lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else kind
        found = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("full_key:")), None)
        if found and kind in ("ConfigKeyError", "ConfigAttributeError"):
            return f"{found} is not a config key ({detail}, in config '{where}'): check the spelling; {_SPELLING_HINT}"
        if found:
            return f"{found}: {detail} (in config '{where}'): give a value of the type the key expects; {_SPELLING_HINT}"
        return f"in config '{where}': {detail}; {_SPELLING_HINT}"
    if isinstance(error, MissingConfigException) and error.missing_cfg_file and "/" in error.missing_cfg_file:
        group, option = error.missing_cfg_file.rsplit("/", 1)
        return f"{group}={option} is not an option: use one of {', '.join(error.options or [])}"
    if isinstance(error, OverrideParseException):
        return (f"cannot parse an override ({first}): write key=value, e.g. train.lr=2e-4, and quote "
                "values with spaces or brackets")
    if isinstance(cause, MissingMandatoryValue) and key:
        return f"{key} is not set: give it on the command line, {key}=VALUE"
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and key:
        return f"{key} is not a config key ({first}): check the spelling; {_SPELLING_HINT}"
    if key:
        value = _override_value(key)
        shown = f"{key}={value}" if value is not None else key
        return f"{shown}: {first}: give a value of the type the key expects; {_SPELLING_HINT}"
    return f"{first}; {_SPELLING_HINT}"


_COMPOSING = re.compile(r"In '(.+)': (\w+) raised while composing config:")


def yaml_error_line(error) -> str:
    """A YAML syntax error as `FILE, line L, column C: problem`."""
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    problem = getattr(error, "problem", None) or _first_line(error)
    context = getattr(error, "context", None)
    where = f"{mark.name}, line {mark.line + 1}, column {mark.column + 1}" if mark else "a config file"
    return (f"{where}: YAML syntax error: {problem}" + (f" ({context})" if context else "")
            + ": fix the file there (quote values with ':' or brackets)")


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _override_value(key: str) -> str | None:
    for arg in sys.argv[1:]:
        name, sep, value = arg.partition("=")
        if sep and name.lstrip("+~") == key:
            return value
    return None


def install_hydra_error_handler() -> None:
    """Make Hydra report config errors (unknown option or key, ill-typed value, bad override
    syntax, missing value) and a multirun job's UserError as `error: <one line>` with exit code 2
    instead of its multi-line message and exit code 1. Other exceptions keep Hydra's own report;
    HYDRA_FULL_ERROR=1 keeps the traceback for everything.

    Hydra routes every phase (composition, the job, --cfg) through
    `hydra._internal.utils.run_and_report`; this wraps it.
    """
    import hydra._internal.utils as hydra_utils
    import yaml
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    original = hydra_utils.run_and_report
    if getattr(original, "zerosr_wrapped", False):
        return

    def run_and_report(func):
        def guarded():
            try:
                return func()
            except (HydraException, OmegaConfBaseException, UserError, yaml.YAMLError) as error:
                if os.environ.get("HYDRA_FULL_ERROR") == "1":
                    raise
                line = str(error) if isinstance(error, UserError) else config_error_line(error)
                print(f"error: {line}", file=sys.stderr)
                sys.exit(2)

        return original(guarded)

    run_and_report.zerosr_wrapped = True
    hydra_utils.run_and_report = run_and_report
    _refuse_added_keys_in_shown_config()


def _refuse_added_keys_in_shown_config() -> None:
    """`--cfg job` shows only a config the job would accept: a key added with `+` that the job
    refuses is the job's one error line here too (run_and_report above makes it exit 2)."""
    from hydra._internal.hydra import Hydra

    original = Hydra.get_sanitized_cfg

    def get_sanitized_cfg(self, cfg, cfg_type):
        shown = original(self, cfg, cfg_type)
        if cfg_type in ("job", "all"):
            from zerosr.config.validate import check_known_keys

            check_known_keys(shown if cfg_type == "job" else original(self, cfg, "job"))  # no hydra node
        return shown

    Hydra.get_sanitized_cfg = get_sanitized_cfg
