"""The one base class of the problems a user can cause or meet and fix: bad parameters, missing or corrupt inputs,
an unwritable folder, a full disk, an unreachable tracking store, a NaN loss. The stage front
(:func:`greg_ood.run.stagecli.run_stage`) ends a stage on a :class:`UserError` with its message as one sentence and exit
status 2 (the traceback too with ``-v``/``--verbose`` or ``GREG_OOD_VERBOSE=1``); any other exception is a bug and
keeps its traceback. A message names the key, file or path concerned and a fix that works."""
from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix; its message is the one sentence the user sees."""
