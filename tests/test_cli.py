"""Which errors are the user's (one message, exit 2) and which are bugs (a traceback)."""

import numpy as np
import pytest

from aukit.cli import DEBUG_VARIABLE, UserError, report_user_error, user_error_message
from aukit.data.manifest import read_manifest


def _raised(function, *args):
    try:
        function(*args)
    except Exception as err:  # noqa: BLE001 - the error is what is under test
        return err
    raise AssertionError("nothing was raised")


def test_an_explicit_aukit_raise_is_a_user_error_and_a_library_bug_is_not(tmp_path):
    bad = tmp_path / "m.csv"
    bad.write_text("path,subject\n")
    ours = _raised(read_manifest, bad)
    assert user_error_message(ours) == str(ours)
    theirs = _raised(np.zeros(4).reshape, 3)  # numpy's ValueError: a bug, keeps its traceback
    assert isinstance(theirs, ValueError) and user_error_message(theirs) is None
    missing = _raised(open, tmp_path / "nowhere.csv")
    assert "nowhere.csv" in user_error_message(missing)


def test_a_user_error_exits_2_with_one_line_unless_debugging(capsys, monkeypatch):
    with pytest.raises(SystemExit) as stop:
        report_user_error(UserError("row 3: no such file; fix: --data.root"), "aukit-finetune")
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("aukit-finetune: error: row 3: no such file; fix: --data.root")
    report_user_error(RuntimeError("a bug"), "aukit-finetune")  # returns: the caller re-raises
    monkeypatch.setenv(DEBUG_VARIABLE, "1")
    report_user_error(UserError("shown with its traceback"), "aukit-finetune")
