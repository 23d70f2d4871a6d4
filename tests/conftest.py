import os

import numpy as np
import pytest
from hypothesis import settings

# Property tests (tests/test_properties.py): a bounded run in CI, a long one with
# HYPOTHESIS_PROFILE=dev. No example database: every run draws fresh examples,
# and a failure prints the reproducing example and seed.
settings.register_profile("ci", max_examples=20, deadline=None, database=None, print_blob=True)
settings.register_profile("dev", max_examples=1000, deadline=None, database=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def rng():
    # Fresh inputs on every run; the seed is printed so a failure can be replayed.
    seed = int(np.random.SeedSequence().entropy % (2**32))
    print(f"rng seed {seed}")
    return np.random.default_rng(seed)
