"""What every cold-start baseline of the field must do alike (``dropoutnet``, ``heater``, ``clcrec``, ``gar``;
``aldi_published`` has its own versions, per training stage, in its file): a state dict round trip, a short
``Trainer`` fit plain and wrapped, and a training step without a host sync, plain and wrapped. Each model's own
behaviour is tested in ``test_<model>.py``."""
from __future__ import annotations

import pytest
from _coldstart_checks import WRAPPERS, check_no_host_sync, check_state_round_trip, check_trainer

# each model's small settings (the same as in its own test file)
OWN = {
    "dropoutnet": {"hidden": 32},
    "heater": {"hidden": 32, "experts": 3},
    "clcrec": {"hidden": 32},
    "gar": {"hidden": 32},
}


@pytest.mark.parametrize("name", list(OWN))
def test_state_dict_round_trip(name):
    check_state_round_trip(name, OWN[name])


@pytest.mark.parametrize("wrapped", [False, True], ids=["plain", "wrapped"])
@pytest.mark.parametrize("name", list(OWN))
def test_trainer_fit(name, wrapped):
    check_trainer(name, OWN[name], wrapped)


@pytest.mark.parametrize("wrappers", [None, WRAPPERS], ids=["plain", "wrapped"])
@pytest.mark.parametrize("name", list(OWN))
def test_step_has_no_host_sync(name, wrappers):
    check_no_host_sync(name, OWN[name], wrappers)
