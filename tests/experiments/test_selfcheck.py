"""`lowbit selfcheck`: every check passes; planted failures and errors are reported (run through
lowbit.cli.main; output checked)."""

from __future__ import annotations

from lowbit.cli import main
from lowbit.experiments import selfcheck


def test_selfcheck_passes_every_check(capsys) -> None:
    assert main(["selfcheck", "--seed", "1"]) == 0
    text = capsys.readouterr().out
    for name, _ in selfcheck.CHECKS:
        status = next(line.split()[0] for line in text.splitlines() if name in line)
        assert status in ("PASS", "SKIP"), f"{name}: {status}"
    assert "0 failed" in text


def test_selfcheck_reports_failures_and_errors(monkeypatch, capsys) -> None:
    def fails(gen):
        raise selfcheck.CheckFailed("planted mismatch")

    def errors(gen):
        raise RuntimeError("planted error")

    def skips(gen):
        raise selfcheck.CheckSkipped("planted reason")

    checks = (("ok", lambda g: "fine"), ("bad", fails), ("broken", errors), ("absent", skips))
    monkeypatch.setattr(selfcheck, "CHECKS", checks)
    assert main(["selfcheck"]) == 1
    text = capsys.readouterr().out
    assert "PASS  ok" in text and "FAIL  bad" in text and "planted mismatch" in text
    assert "FAIL  broken" in text and "RuntimeError: planted error" in text
    assert "SKIP  absent" in text and "1 passed, 2 failed, 1 skipped" in text
