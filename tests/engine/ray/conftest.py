"""The Ray tests need the ray extra; without it they are skipped (nothing else imports ray)."""

import pytest

pytest.importorskip("ray", reason="the ray extra is not installed: pip install 'reward-engine[ray]'")
