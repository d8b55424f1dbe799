"""Error messages of the ``params.yaml`` validation (:mod:`greg_ood.run.config`): one line per problem naming the dotted
key, what was given and what is allowed, with the closest valid key for a typo (also one level deeper: a
``train.lambda_grad`` typo points at ``train.loss.lambda_grad``)."""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from ..archs import ARCHS


def _check_names(what: str, given, allowed) -> None:
    """Raise ``what`` for the first name of ``given`` not in ``allowed``, with the closest allowed name if any."""
    allowed = list(allowed)
    for name in given:
        if name not in allowed:
            close = difflib.get_close_matches(str(name), allowed, n=1, cutoff=0.6)
            hint = f" — did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"{what} {name!r}{hint} Allowed: {', '.join(allowed) or '(none)'}.")


def _arch_option_names(arch: str) -> list[str]:
    """The keyword options an architecture's constructor takes (what ``arch_options.<arch>`` may set)."""
    return list(ARCHS[arch].options)


def _format_errors(e: ValidationError, prefix: str, raw: Any, path: Path, root: Any) -> str:
    lines = [f"{path}: invalid parameters ({e.error_count()} problem{'s' if e.error_count() > 1 else ''}):"]
    for err in e.errors():
        loc = [str(x) for x in err["loc"] if not str(x).startswith(("function-", "literal["))]
        key = ".".join(([prefix] if prefix else []) + loc)
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(root, err["loc"])
            hint = ""
            bad = str(err["loc"][-1])
            close = difflib.get_close_matches(bad, allowed, n=1, cutoff=0.6)
            if not close:  # maybe it belongs one level deeper (e.g. train.lambda_grad -> train.loss.lambda_grad)
                parent = _parent_model(root, err["loc"])
                deeper = {p.rsplit(".", 1)[-1]: p for p in _all_paths(parent)} if parent is not None else {}
                close = [deeper[c] for c in difflib.get_close_matches(bad, list(deeper), n=1, cutoff=0.75)]
            if close:
                hint = f" — did you mean {close[0]!r}?"
            msg = f"unknown key{hint}" + (f" Allowed keys here: {', '.join(sorted(allowed))}." if allowed else "")
        elif "input" in err and err["type"] != "missing" and not isinstance(err["input"], (dict, list)):
            # a scalar is worth echoing; a whole section (a model-level check) would bury the sentence
            msg += f" (got {err['input']!r})"
        lines.append(f"  - {key}: {msg}" if key else f"  - {msg.removeprefix('Value error, ')}")
    return "\n".join(lines)


def _has(d: Any, loc) -> bool:
    cur = d
    for k in loc:
        if isinstance(cur, dict) and k in cur:
            cur = cur[k]
        elif isinstance(cur, list) and isinstance(k, int) and k < len(cur):
            cur = cur[k]
        else:
            return False
    return True


def _all_paths(model: Any, prefix: str = "") -> list[str]:
    out = []
    for name, f in getattr(model, "model_fields", {}).items():
        out.append(prefix + name)
        inner = _inner_model(f.annotation)
        if inner is not None and inner is not model:
            out += _all_paths(inner, prefix + name + ".")
    return out


def _allowed_keys(root: Any, loc) -> list[str]:
    """Field names of the model at the error's parent location (walks the schema from ``root``)."""
    model = _parent_model(root, loc)
    fields = getattr(model, "model_fields", None)
    return list(fields) if fields else []


def _parent_model(root: Any, loc) -> Any:
    model: Any = root
    for k in loc[:-1]:
        if isinstance(k, int):
            continue
        fields = getattr(model, "model_fields", None)
        if fields is None:
            return None
        if k in fields:  # else: a user-chosen name inside dict[str, Model]; stay on that model
            model = _inner_model(fields[k].annotation)
        if model is None:
            return None
    return model


def _inner_model(ann: Any) -> Any:
    import typing

    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for a in typing.get_args(ann):
        m = _inner_model(a)
        if m is not None:
            return m
    return None
