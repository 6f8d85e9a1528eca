"""The scripts' one flag rule (qupath_scripts/lib/MilsilSettings.groovy), under both Groovy runtimes.

A flag is true/false, yes/no or 1/0 in any case (a Boolean in a settings block, text in a
``-Dmilsil.<key>=`` override); a flag left out takes its documented default; anything else
stops the script with one line naming the setting and the allowed values.
"""

from __future__ import annotations

import pytest
from qupath_support import ROOT, groovy_env

ALLOWED = "allowed: true, yes, 1, false, no, 0"
CASES = {
    "addTiles=true": "true",
    "addTiles=TRUE": "true",
    "addTiles= yes ": "true",
    "addTiles=1": "true",
    "addTiles=false": "false",
    "addTiles=No": "false",
    "addTiles=0": "false",
    # Left out: the documented default (the scripts' settings blocks say the same).
    "retryBusy": "true",
    "wholeImageIfNoSelection": "true",
    "serverSlides": "false",
    "addTiles": "false",
    # Anything else: one line naming the setting and the allowed values.
    "addTiles=ture": f'milsil: SETUP: setting addTiles = "ture" is not a flag; {ALLOWED}',
    "serverSlides=": f'milsil: SETUP: setting serverSlides = "" is not a flag; {ALLOWED}',
    "noSuchFlag": "milsil: SETUP: setting noSuchFlag is missing and has no default; "
    "set noSuchFlag = true or false in the settings",
}


@pytest.mark.parametrize("runtime", sorted(groovy_env.RUNTIMES))
def test_one_flag_rule(runtime):
    rt = groovy_env.RUNTIMES[runtime]()
    result = rt.run(
        ROOT / "qupath_scripts" / "tests" / "settings_check.groovy",
        [str(ROOT / "qupath_scripts"), *CASES],
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.splitlines() == list(CASES.values())
