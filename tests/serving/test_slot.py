"""The champion slot's memory of refusals, at registry states a real poll only lands on by
chance: a promotion is recorded between reading the alias and reading its signed move. The
registry calls are replaced here because that interleaving cannot be caused on demand; the
end-to-end refusal runs against a real server in ``test_reload``."""

from __future__ import annotations

import json

import pytest

from registry.errors import PromotionRefusedError
from registry.versions import VersionInfo
from serving import reload
from serving.reload import ChampionSlot


def _version(number: str) -> VersionInfo:
    return VersionInfo(name="m", version=number, run_id=f"run{number}", source="", model_id="",
                       aliases=("champion",), tags={"status": "ready"}, description="")


class _Registry:
    """Who holds the alias, which version the signed move names, and the load attempts."""

    def __init__(self, holder: str, granted: str) -> None:
        self.holder, self.granted = holder, granted
        self.loads: list[str] = []

    def resolve(self, name: str, tracking_uri: str | None) -> VersionInfo:
        return _version(self.holder)

    def signed_move(self, info: VersionInfo, tracking_uri: str | None) -> str:
        grant = json.dumps({"record": {"version": self.granted}, "seq": int(self.granted)})
        return grant if self.granted == info.version else ""

    def load(self, info: VersionInfo, tracking_uri: str | None, threads: int | None,
             not_before: int = 0) -> object:
        self.loads.append(info.version)
        raise PromotionRefusedError(f"v{info.version} does not verify", ["served ONNX hash"])


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> _Registry:
    fake = _Registry(holder="2", granted="2")
    for name in ("resolve", "signed_move", "load"):
        monkeypatch.setattr(reload.champions, name, getattr(fake, name))
    return fake


def _slot(outcomes: list[str]) -> ChampionSlot:
    return ChampionSlot("m", None, poll_interval=1.0, before_swap=lambda champion: None,
                        on_outcome=lambda outcome, current: outcomes.append(outcome))


def test_a_refused_holder_is_not_downloaded_again_while_another_move_is_recorded(registry):
    outcomes: list[str] = []
    slot = _slot(outcomes)
    assert slot.check() == "refused"
    assert slot.check() == "unchanged"
    registry.granted = "3"  # v3's move is signed, the alias has not moved yet
    assert slot.check() == "unchanged"
    assert registry.loads == ["2"] and outcomes == ["refused"]


def test_a_refused_holder_is_looked_at_again_once_a_new_signed_move_vouches_for_it(registry):
    outcomes: list[str] = []
    slot = _slot(outcomes)
    registry.granted = "1"  # the alias was moved to v2 by hand: no signed move names it
    assert slot.check() == "refused"
    assert slot.check() == "unchanged"
    registry.granted = "2"  # `vitedit-ops promote` now signs the move to v2
    assert slot.check() == "refused"
    assert registry.loads == ["2", "2"] and outcomes == ["refused", "refused"]
