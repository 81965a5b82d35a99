"""Render docs/settings.md from the services' pydantic settings classes (every BaseSettings class in `services`).

    python scripts/settings_doc.py            # (re)write docs/settings.md (make docs)
    python scripts/settings_doc.py --check    # exit 1 if docs/settings.md differs from what this would write

For each settings class: a table of environment variable, command-line flag, type, default and description
(the Field's description). The flags are read from the parser `services.common.settings.parse_settings` builds,
so the page shows the flags the services accept. A setting without a description is rendered with an empty
cell and named on stderr.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import inspect
import pkgutil
import re
import sys
import textwrap
import types
import typing
from pathlib import Path
from unittest import mock

from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from runtime.markdown import table

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "settings.md"
PACKAGES = ("services",)  # where settings classes live
HEADER = ("environment variable", "flag", "type", "default", "description")


def settings_classes() -> list[type[BaseSettings]]:
    """Every BaseSettings subclass defined in PACKAGES: the services' classes first, then their shared bases."""
    found: dict[str, type[BaseSettings]] = {}
    for package_name in PACKAGES:
        package = importlib.import_module(package_name)
        for info in pkgutil.walk_packages(package.__path__, f"{package_name}."):
            if info.name.rsplit(".", 1)[-1] == "__main__":  # importing it would start a service
                continue
            module = importlib.import_module(info.name)
            for obj in vars(module).values():
                if (
                    inspect.isclass(obj)
                    and issubclass(obj, BaseSettings)
                    and obj is not BaseSettings
                    and obj.__module__ == module.__name__
                ):
                    found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    classes = [found[key] for key in sorted(found)]
    return sorted(classes, key=lambda cls: bool(subclasses_of(cls, classes)))  # stable: bases last


def subclasses_of(cls: type, classes: list[type]) -> list[type]:
    return [other for other in classes if other is not cls and issubclass(other, cls)]


class _Parser(Exception):
    def __init__(self, parser: argparse.ArgumentParser):
        super().__init__()
        self.parser = parser


def cli_flags(cls: type[BaseSettings]) -> dict[str, list[str]]:
    """Field name -> its flags, from the parser the services build (none for a class they do not parse)."""
    from services.common.settings import ServiceSettings, parse_settings

    if not issubclass(cls, ServiceSettings):
        return {}

    def stop(parser, *args, **kwargs):
        raise _Parser(parser)

    try:
        with mock.patch.object(argparse.ArgumentParser, "parse_args", stop):
            parse_settings(cls, [], "settings_doc")
    except _Parser as built:
        actions = built.parser._actions
    else:
        return {}
    return {
        action.dest: list(action.option_strings)
        for action in actions
        if action.option_strings and action.dest != "help"
    }


def env_prefix(cls: type[BaseSettings]) -> str:
    return str(cls.model_config.get("env_prefix", ""))


def _type_name(annotation) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return ", ".join(f"`{arg}`" for arg in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(arg) for arg in args if arg is not type(None))
    if annotation is Path:
        return "path"
    return getattr(annotation, "__name__", str(annotation))


def type_text(field: FieldInfo) -> str:
    text = _type_name(field.annotation)
    bounds = []
    for constraint in field.metadata:
        for attribute, symbol in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            value = getattr(constraint, attribute, None)
            if value is not None:
                bounds.append(f"{symbol} {_number(value)}")
    return f"{text} ({', '.join(bounds)})" if bounds else text


def _number(value):
    return int(value) if isinstance(value, float) and value.is_integer() else value


def default_text(field: FieldInfo) -> str:
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "(none)"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if value == "":
        return "(empty)"
    if isinstance(value, Path):
        return f"`{value.as_posix()}`"
    return f"`{_number(value)}`"


def cell(text: str) -> str:
    """One table cell: on one line, its pipes escaped, and `<` escaped so `<key>` is not read as an HTML tag."""
    return re.sub(r"<(?=[A-Za-z/!])", r"\\<", " ".join(str(text).split()).replace("|", "\\|"))


def rows_of(cls: type[BaseSettings]) -> list[tuple[str, ...]]:
    prefix, flags = env_prefix(cls), cli_flags(cls)
    rows = []
    for name, field in cls.model_fields.items():
        options = flags.get(name, [])
        rows.append(
            (
                f"`{prefix}{name.upper()}`",
                " ".join(f"`{flag}`" for flag in options),
                type_text(field),
                default_text(field),
                field.description or "",
            )
        )
    return rows


def undescribed(classes: list[type[BaseSettings]]) -> list[str]:
    return [
        f"{cls.__name__}.{name}" for cls in classes for name, field in cls.model_fields.items() if not field.description
    ]


def _source(cls: type) -> str:
    return Path(inspect.getsourcefile(cls)).resolve().relative_to(REPO).as_posix()


def _intro() -> list[str]:
    from services.common.settings import GPU_MAX_BATCH_SIZE, GPU_MAX_BATCH_TOKENS

    return [
        "# Settings",
        "",
        "<!-- Generated by scripts/settings_doc.py from the pydantic settings classes: run `make docs`. -->",
        "",
        "Every setting of a service is a command-line flag and an environment variable: the field name, dashed for",
        "the flag (`--max-wait-ms`), upper-case after the service's prefix for the variable (`ONNX_API_MAX_WAIT_MS`).",
        "A flag wins over the variable, the variable over the default; a boolean flag also has a `--no-` form.",
        "A value that is invalid, or that contradicts another setting, stops start-up with exit code 2 and one",
        "line naming the setting and where it came from.",
        f"With `--device cuda`, `max_batch_size` and `max_batch_tokens` default to {GPU_MAX_BATCH_SIZE} and "
        f"{GPU_MAX_BATCH_TOKENS} unless given.",
        "What the settings do together: [serving.md](serving.md) and [api.md](api.md).",
    ]


def render() -> str:
    classes = settings_classes()
    lines = _intro()
    for cls in classes:
        subclasses = subclasses_of(cls, classes)
        service = cls.__module__.split(".")[1] if cls.__module__.count(".") >= 2 else cls.__module__
        title = f"Shared base: `{cls.__name__}`" if subclasses else f"`{service}`: `{cls.__name__}`"
        lines += ["", f"## {title} (`{_source(cls)}`)", ""]
        if subclasses:
            quoted = [f"`{sub.__name__}`" for sub in subclasses]
            names = " and ".join([", ".join(quoted[:-1]), quoted[-1]] if len(quoted) > 1 else quoted)
            lines += [
                *textwrap.wrap(
                    f"The settings that {names} inherit: their tables above include them, under their "
                    f"own prefixes. Used directly, as the tests do, it reads the prefix "
                    f"`{env_prefix(cls)}`.",
                    116,
                    break_on_hyphens=False,
                ),
                "",
            ]
        else:
            lines += [f"Environment prefix `{env_prefix(cls)}`.", ""]
        lines += table(HEADER, [[cell(value) for value in row] for row in rows_of(cls)]).splitlines()
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python scripts/settings_doc.py", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the page differs from what would be written")
    parser.add_argument("--out", type=Path, default=DOC, help=f"the page (default {DOC.relative_to(REPO)})")
    args = parser.parse_args(argv)
    text = render()
    for name in undescribed(settings_classes()):
        print(f"warning: setting {name} has no description (rendered with an empty cell)", file=sys.stderr)
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.is_file() else ""
        if current == text:
            return 0
        diff = difflib.unified_diff(current.splitlines(), text.splitlines(), str(args.out), "generated", lineterm="")
        print("\n".join(list(diff)[:40]), file=sys.stderr)
        print(f"{args.out} is stale: run `make docs` (python scripts/settings_doc.py)", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
