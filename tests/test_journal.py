"""What an interrupted change reports: steps are matched by identity, so a step done is never also "not done"."""

from __future__ import annotations

import pytest
from nginxctl import nginx, workflows
from nginxctl.errors import Interrupted, Journal, Step

from helpers import free_port
from test_fleet import fleet


def test_a_step_done_in_other_words_is_no_longer_pending():
    journal = Journal()
    journal.plan((Step.EDIT, "`down: true` written in inventory.yaml"), Step.INSTALL, Step.RELOAD)
    journal.did(Step.INSTALL, "new config installed at /etc/nginx/nginx.conf (nginx still runs the previous one)")
    journal.did(Step.RELOAD, "reloaded and verified: nginx runs the new config")
    report = journal.interrupted()
    assert report.done == ["new config installed at /etc/nginx/nginx.conf (nginx still runs the previous one)",
                           "reloaded and verified: nginx runs the new config"]
    assert report.not_done == ["`down: true` written in inventory.yaml"]
    assert journal.has_done(Step.RELOAD) and not journal.has_done(Step.EDIT)


@pytest.mark.integration
def test_ctrl_c_after_the_canary_reloaded_does_not_call_its_reload_not_done(lb, isolated, backends):
    a = backends("A")
    box = isolated()
    inv = fleet(lb, box, {"pool": {"listen": f"127.0.0.1:{free_port()}", "servers": [a.address]}})

    def progress(message: str) -> None:
        if message.startswith("lb2: applying"):  # the canary lb1 is reloaded and verified by now
            raise KeyboardInterrupt

    with pytest.raises(Interrupted) as caught:
        workflows.apply_inventory(inv, connect=nginx.connect, reload=True, progress=progress)
    assert "reloaded and verified: nginx runs the new config" in caught.value.done
    assert "reload and verify" not in caught.value.not_done
