"""User errors travel from worker processes and Ray tasks back to the CLI as the same one-line error."""
import pickle

import pytest

from nas.errors import UserError


def test_user_error_pickles_with_its_parts():
    e = pickle.loads(pickle.dumps(UserError("file.yaml", "bad stride", "fix the stride")))
    assert (e.where, e.what, e.fix) == ("file.yaml", "bad stride", "fix the stride")
    assert e.one_line() == "file.yaml: bad stride (fix the stride)"


def test_user_error_in_a_ray_task_reaches_the_caller_as_a_user_error():
    import ray

    from nas.parallel import ray_session

    def _raise_user_error():  # local, so Ray ships it by value (workers cannot import test modules)
        raise UserError("data.npz", "training set smaller than one batch", "use a larger --subset")

    with ray_session(1):
        with pytest.raises(UserError) as info:
            ray.get(ray.remote(_raise_user_error).remote())
    assert info.value.one_line() == "data.npz: training set smaller than one batch (use a larger --subset)"
